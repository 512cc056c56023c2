"""Experiment tracking beyond trl's own `report_to`: a run's evaluation metrics logged beside its
training curves (TensorBoard: <run dir>/tensorboard/eval). Imports torch only when asked to.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from empo.config import ExperimentConfig

log = logging.getLogger(__name__)


def selected(cfg: ExperimentConfig) -> set[str]:
    """The integrations chosen for the experiment's training stages."""
    return {name for section in cfg.training_sections().values() for name in section.report_to}


def log_eval_metrics(cfg: ExperimentConfig, directory: Path, keys: tuple[str, ...]) -> None:
    """Write `keys` of the run's metrics.json as `eval/<key>` scalars to its TensorBoard run."""
    if not {"tensorboard", "all"} & selected(cfg):
        return
    try:
        metrics = json.loads((Path(directory) / "metrics.json").read_text())
    except (OSError, ValueError):
        return
    values = {k: metrics[k] for k in keys if isinstance(metrics.get(k), (int, float))}
    if not values:
        return
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(Path(directory) / "tensorboard" / "eval"))
    try:
        for key, value in values.items():
            writer.add_scalar(f"eval/{key}", float(value), 0)
    finally:
        writer.close()
    log.info("tensorboard: %s -> %s", ", ".join(values), Path(directory) / "tensorboard" / "eval")
