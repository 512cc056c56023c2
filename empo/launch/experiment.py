"""results/<name>/experiment.yaml: the resolved config of an experiment, and what a changed
config re-runs.

Identity is per stage (`empo.pipeline`): a changed config re-runs exactly the stages whose
fingerprint changed, and `reruns` says which and why before anything starts. `--force-new` still
starts a fresh directory: the old one is moved aside whole to results/<name>.<time> (never
deleted; old and new runs never mix). Only a directory EmPO made (`store.claim_experiment_dir`)
is written into or moved.
"""
from __future__ import annotations

import datetime
import logging
from pathlib import Path

from empo.config import EXPERIMENT_FILE, ExperimentConfig
from empo.pipeline import Graph
from empo.store import atomic_write_text, claim_experiment_dir

log = logging.getLogger(__name__)


def aside_path(experiment_dir: Path) -> Path:
    """Where --force-new moves an experiment: results/<name>.<YYYYmmdd-HHMMSS>[.<n>]."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = experiment_dir.with_name(f"{experiment_dir.name}.{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = experiment_dir.with_name(f"{experiment_dir.name}.{stamp}.{n}")
    return candidate


def run_lock_path(experiment_dir: Path) -> Path:
    """results/.<name>.run.lock: held by the `empo run` / `empo submit` driving an experiment
    (beside the directory, which --force-new may move aside)."""
    experiment_dir = Path(experiment_dir)
    return experiment_dir.with_name(f".{experiment_dir.name}.run.lock")


def write_experiment(cfg: ExperimentConfig, force_new: bool = False) -> Path | None:
    """Record the resolved config in results/<name>/experiment.yaml; with `force_new` first
    move an existing directory aside whole. Returns where the old directory went, if moved."""
    exp = cfg.experiment_dir
    moved = None
    existed = exp.exists()
    claim_experiment_dir(exp)  # a directory EmPO did not make is refused, never moved or written
    if force_new and existed:
        moved = aside_path(exp)
        exp.rename(moved)
        log.warning("moved %s aside to %s", exp, moved)
        claim_experiment_dir(exp)
    header = ("# The resolved config of this experiment, as last run. Identity is per stage:\n"
              "# each run directory's stage.json holds its stages' fingerprints.\n")
    atomic_write_text(exp / EXPERIMENT_FILE, header + cfg.to_yaml())
    return moved


def reruns(graph: Graph) -> list[str]:
    """One line per finished stage that the current config makes stale: what re-runs and the
    changed keys that cause it (its own fields, or an upstream stage that re-runs)."""
    return [f"{stage.key} re-runs: {', '.join(stage.changed_fields()[:6])}"
            for stage in graph if stage.superseded()]
