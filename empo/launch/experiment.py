"""results/<name>/experiment.yaml: the resolved config of an experiment, headed by its hash.

A results directory belongs to one config hash (seeds and cluster placement are not hashed, so
adding seeds or moving clusters reuses finished runs). Another config is refused with the keys
that differ; `--force-new` moves the whole old directory aside to results/<name>.<old hash>
(never deletes, never mixes runs of two configs) and starts afresh.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from empo.config import ExperimentConfig
from empo.errors import LaunchError
from empo.results.store import atomic_write_text

log = logging.getLogger(__name__)

EXPERIMENT_FILE = "experiment.yaml"


def stored_hash(experiment_dir: Path) -> str | None:
    """The config hash recorded in results/<name>/experiment.yaml, or None without one."""
    path = Path(experiment_dir) / EXPERIMENT_FILE
    if not path.exists():
        return None
    first = path.read_text().split("\n", 1)[0]
    prefix = "# config hash: "
    if first.startswith(prefix):
        return first[len(prefix):].split()[0]
    from empo.results.aggregate import experiment_config  # an experiment.yaml written by hand

    stored = experiment_config(experiment_dir)
    return stored.config_hash() if stored is not None else None


def check_experiment_dir(cfg: ExperimentConfig) -> str | None:
    """LaunchError if results/<name> holds runs of another config hash; returns the stored hash."""
    exp = cfg.experiment_dir
    stored = stored_hash(exp)
    if stored is None or stored == cfg.config_hash():
        return stored
    raise LaunchError(
        f"{exp / EXPERIMENT_FILE}: this results directory belongs to config hash {stored}, "
        f"but the config given has hash {cfg.config_hash()}{_diff_hint(cfg)}. Use another "
        "`name:`/`results_dir:`, or pass --force-new to move the old results aside "
        f"(to {aside_path(exp, stored).name}) and start afresh")


def _diff_hint(cfg: ExperimentConfig) -> str:
    from empo.results.aggregate import experiment_config

    try:
        stored = experiment_config(cfg.experiment_dir)
    except Exception:  # noqa: BLE001 - only a hint; the error itself is the hash mismatch
        return ""
    if stored is None:
        return ""
    changed = _changed_keys(stored.to_dict(), cfg.to_dict())
    changed = [k for k in changed if not k.startswith(("seeds", "cluster"))]
    if not changed:
        return ""
    return f" (changed: {', '.join(changed[:8])}{', ...' if len(changed) > 8 else ''})"


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def aside_path(experiment_dir: Path, old_hash: str) -> Path:
    """Where --force-new moves an experiment of another hash: results/<name>.<hash>[.<n>]."""
    candidate = experiment_dir.with_name(f"{experiment_dir.name}.{old_hash}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = experiment_dir.with_name(f"{experiment_dir.name}.{old_hash}.{n}")
    return candidate


def write_experiment(cfg: ExperimentConfig, force_new: bool = False) -> Path | None:
    """Record the resolved config (with its hash) in results/<name>/experiment.yaml.

    A directory of another hash is refused, or with `force_new` moved aside whole to
    results/<name>.<old hash> (nothing is deleted; old and new runs never mix). Returns where the
    old directory went, if it was moved.
    """
    exp = cfg.experiment_dir
    moved = None
    try:
        stored = check_experiment_dir(cfg)
    except LaunchError:
        if not force_new:
            raise
        stored = stored_hash(exp)
        moved = aside_path(exp, stored or "old")
        exp.rename(moved)
        log.warning("moved %s (config hash %s) aside to %s", exp, stored, moved)
    exp.mkdir(parents=True, exist_ok=True)
    header = (f"# config hash: {cfg.config_hash()}\n"
              "# The resolved config of this experiment (seeds and cluster are not hashed).\n")
    atomic_write_text(exp / EXPERIMENT_FILE, header + cfg.to_yaml())
    return moved
