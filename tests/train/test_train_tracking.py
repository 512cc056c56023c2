"""Experiment tracking (issue 15): with `sft.report_to: [tensorboard]` the SFT stage writes event
files holding its loss curve under <run dir>/tensorboard/sft, and the run's evaluation metrics
go to <run dir>/tensorboard/eval."""
from __future__ import annotations

import json

import pytest

from empo.tracking import log_eval_metrics


def scalars(directory) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_holds_the_sft_loss_curve_and_the_eval_metrics(make_cfg, tmp_path, monkeypatch):
    from empo.train.sft import train_sft

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "")  # restored after (the stage sets it)
    cfg = make_cfg("sft.report_to=[tensorboard]", "sft.logging_steps=1")
    run = tmp_path / "runs" / "sft" / "seed-1"
    train_sft(cfg, 1, run)
    curves = scalars(run / "tensorboard" / "sft")
    assert len(curves["train/loss"]) >= 2 and all(v > 0 for v in curves["train/loss"])
    assert not (run / "checkpoints").exists()  # the events are kept outside the checkpoints
    (run / "metrics.json").write_text(json.dumps({"mmlu": 0.25, "fbert": 0.5}))
    log_eval_metrics(cfg, run, ("mmlu", "fbert"))
    assert scalars(run / "tensorboard" / "eval") == {"eval/mmlu": [0.25], "eval/fbert": [0.5]}
