"""Hand-made run stores (DESIGN §5) for the results layer's tests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from empo.config import ExperimentConfig, from_dict
from empo.store import claim_experiment_dir

METRIC_KEYS = ("mmlu", "diff_er", "diff_ex", "diff_ip", "fbert")

# The paper-like store used by the exact-value and snapshot tests: variant -> seed -> metrics.
TABLE1_RUNS: dict[str, dict[int, dict[str, Any]]] = {
    "baseline": {s: {"mmlu": 0.588, "diff_er": 0.861, "diff_ex": 1.113, "diff_ip": 1.431,
                     "fbert": 0.804, "epitome_er_pred": 1.0} for s in (1, 2, 3, 4)},
    "sft": {
        1: {"mmlu": 0.58, "diff_er": 0.90, "diff_ex": 0.66, "diff_ip": 0.75, "fbert": 0.867},
        2: {"mmlu": 0.58, "diff_er": 0.87, "diff_ex": 0.65, "diff_ip": 0.74, "fbert": 0.866},
        3: {"mmlu": 0.581, "diff_er": 0.88, "diff_ex": 0.64, "diff_ip": 0.76, "fbert": 0.868},
        4: {"mmlu": 0.579, "diff_er": 0.90, "diff_ex": 0.68, "diff_ip": 0.75, "fbert": 0.867},
    },
    "sft_dpo": {  # seed 4 has no metrics.json; seed 2 lacks mmlu
        1: {"mmlu": 0.57, "diff_er": 0.66, "diff_ex": 0.63, "diff_ip": 0.65, "fbert": 0.73},
        2: {"diff_er": 0.65, "diff_ex": 0.62, "diff_ip": 0.60, "fbert": 0.72},
        3: {"mmlu": 0.575, "diff_er": 0.67, "diff_ex": 0.63, "diff_ip": 0.70, "fbert": 0.74},
    },
}


def _write_run(experiment_dir: Path, variant: str, seed: int, metrics: Any = None) -> Path:
    """runs/<variant>/seed-<s>/ with metrics.json (a dict as JSON, a str verbatim, None: none)."""
    run = experiment_dir / "runs" / variant / f"seed-{seed}"
    run.mkdir(parents=True, exist_ok=True)
    if isinstance(metrics, str):
        (run / "metrics.json").write_text(metrics)
    elif metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def _write_store(experiment_dir: Path, runs: dict[str, dict[int, Any]],
                cfg: ExperimentConfig | None = None) -> Path:
    """A run store EmPO made (its ownership marker written) with the given runs (and
    experiment.yaml when a config is given)."""
    claim_experiment_dir(experiment_dir)
    for variant, seeds in runs.items():
        for seed, metrics in seeds.items():
            _write_run(experiment_dir, variant, seed, metrics)
    if cfg is not None:
        (experiment_dir / "experiment.yaml").write_text(cfg.to_yaml())
    return experiment_dir


def _make_config(tmp_path: Path, **raw: Any) -> ExperimentConfig:
    """A validated config from plain data (defaults elsewhere), results under tmp_path."""
    data = {"name": "exp", "results_dir": str(tmp_path / "results"), **raw}
    return from_dict(data, root=tmp_path)


@pytest.fixture
def write_run():
    """write_run(experiment_dir, variant, seed, metrics=None) -> run dir."""
    return _write_run


@pytest.fixture
def write_store():
    """write_store(experiment_dir, {variant: {seed: metrics}}, cfg=None) -> experiment_dir."""
    return _write_store


@pytest.fixture
def make_config(tmp_path: Path):
    """make_config(**sections) -> ExperimentConfig named `exp`, results under tmp_path."""
    return lambda **raw: _make_config(tmp_path, **raw)


@pytest.fixture
def table1_runs() -> dict[str, dict[int, dict[str, Any]]]:
    return json.loads(json.dumps(TABLE1_RUNS), object_hook=_int_keys)


def _int_keys(obj: dict) -> dict:
    return {int(k) if k.isdigit() else k: v for k, v in obj.items()}


@pytest.fixture
def table1_store(tmp_path: Path) -> Path:
    """results/table1 with TABLE1_RUNS, sft_dpo/seed-4 present but without metrics, no config."""
    store = _write_store(tmp_path / "results" / "table1", TABLE1_RUNS)
    _write_run(store, "sft_dpo", 4)
    return store
