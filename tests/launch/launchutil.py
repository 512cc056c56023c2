"""Hand-made run stores for the launcher tests: what finished stages leave on disk."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from empo.config import ExperimentConfig
from empo.store import mark_done, run_dir
from fakes import fake_training

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def write_config(root: Path, overrides: dict[str, Any] | None = None, name: str = "exp") -> Path:
    """configs/<name>.yaml under `root` (so `root` is the project root its paths start from)."""
    data: dict[str, Any] = {"name": "t", "seeds": [1, 2], "results_dir": "results"}
    for key, value in (overrides or {}).items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = root / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


METRICS = {"epitome": {"diff_er": 0.9, "diff_ex": 1.1, "diff_ip": 1.4},
           "bertscore": {"fbert": 0.8}, "mmlu": {"mmlu": 0.5}}


def finish_stage(stage, value: float = 0.0) -> None:
    """Write what a finished stage leaves behind (markers, an adapter dir, metrics), by hand."""
    where = stage.directory
    where.mkdir(parents=True, exist_ok=True)
    if stage.kind in ("sft", "dpo"):
        fake_training(where)
    elif stage.kind == "generate":
        (where / "predictions.jsonl").write_text(json.dumps({"prediction": "hi"}) + "\n")
        mark_done(where, "generate")
    elif stage.kind in METRICS:
        metrics_path = where / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        metrics.update({k: v + value for k, v in METRICS[stage.kind].items()})
        metrics_path.write_text(json.dumps(metrics))
        mark_done(where, stage.kind)
    else:
        raise ValueError(f"finish_stage does not fake {stage.kind}")
    stage.write_record("done")


def finish_all_but(graph, keep: set[str], value_of=lambda stage: 0.0) -> None:
    """Finish every training/eval stage of `graph` by hand except the kinds in `keep`, in an
    experiment directory EmPO owns (its marker), as a run would have made it."""
    from empo.store import claim_experiment_dir

    claim_experiment_dir(graph.experiment_dir)
    for stage in graph:
        if stage.kind not in keep and stage.kind not in ("share", "aggregate"):
            finish_stage(stage, value_of(stage))


def experiment_run(cfg: ExperimentConfig, variant: str, seed: int) -> Path:
    return run_dir(cfg.experiment_dir, variant, seed)


def manifest_jobs(graph) -> dict[str, dict[str, Any]]:
    """A manifest's jobs as a submission writes them: each unit's stages share its job id."""
    from empo.launch.jobs import plan_units

    jobs = {}
    for number, unit in enumerate(plan_units(graph), start=1):
        for stage in unit.stages:
            jobs[stage.key] = {"job_id": str(number), "executor": "slurm", "unit": unit.key,
                               "stderr": f"/jobs/{number}_0_log.err"}
    return jobs
