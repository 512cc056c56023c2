"""The pipeline's evaluation stages: run-store outputs, metrics merged, DONE markers honoured."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from empo.config import load_config
from empo.errors import EvalError
from empo.evaluate.stages import bertscore_stage, epitome_stage, generate_stage, mmlu_stage
from empo.store import is_done, run_dir

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "experiments" / "smoke.yaml"


@pytest.fixture()
def cfg(tiny_assets: Path, tmp_path: Path):
    """The smoke config on the session's tiny assets, 5 eval examples, results in tmp_path."""
    a = tiny_assets
    return load_config(SMOKE, [
        f"assets={a}", f"results_dir={tmp_path / 'results'}", f"model.name_or_path={a / 'model'}",
        f"model.architecture={a / 'model' / 'config.json'}", f"data.source={a / 'ed'}",
        "data.max_eval_examples=5", "eval.generation.max_new_tokens=6",
        "eval.generation.batch_size=2", f"eval.epitome.checkpoints={a / 'epitome'}",
        f"eval.epitome.encoder={a / 'epitome' / 'encoder'}",
        f"eval.epitome.tokenizer={a / 'epitome' / 'encoder'}",
        f"eval.bertscore.model={a / 'bertscore'}", f"eval.mmlu.include_path={a / 'mmlu'}",
        "eval.mmlu.num_fewshot=1", "eval.mmlu.limit=2",
    ])


def test_stages_write_the_run_store_and_skip_when_done(cfg, adapter):
    run = run_dir(cfg.experiment_dir, "sft", 1)
    predictions = generate_stage(cfg, 1, run, adapter)
    assert predictions == run / "predictions.jsonl" and is_done(run, "generate")
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 5
    assert set(rows[0]) == {"conv_id", "emotion", "seeker", "prompt", "reference", "prediction"}

    epitome = epitome_stage(cfg, run)
    assert epitome["epitome_n"] == 5 and is_done(run, "epitome")
    assert len((run / "epitome_items.jsonl").read_text().splitlines()) == 5
    fbert = bertscore_stage(cfg, run)
    assert set(fbert) == {"fbert", "bertscore_precision", "bertscore_recall"}
    mmlu = mmlu_stage(cfg, run, adapter)
    assert 0 <= mmlu["mmlu"] <= 1 and (run / "mmlu_results.json").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == {**epitome, **fbert, **mmlu}

    # finished stages are never redone: without predictions they still return the stored keys
    predictions.unlink()
    assert generate_stage(cfg, 1, run, adapter) == predictions and not predictions.exists()
    assert epitome_stage(cfg, run) == epitome
    assert bertscore_stage(cfg, run) == fbert
    assert mmlu_stage(cfg, run, adapter) == mmlu


def test_epitome_stage_needs_checkpoints(cfg, tmp_path):
    cfg = cfg.with_overrides({"eval.epitome.checkpoints": None})
    with pytest.raises(EvalError, match="eval.epitome.checkpoints is not set"):
        epitome_stage(cfg, tmp_path)
    assert not is_done(tmp_path, "epitome")


def test_missing_predictions_fail_without_marker(cfg, tmp_path):
    with pytest.raises(EvalError, match="predictions file does not exist"):
        bertscore_stage(cfg, tmp_path)
    assert not is_done(tmp_path, "bertscore") and not (tmp_path / "metrics.json").exists()
