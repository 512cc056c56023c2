"""`empo eval ...`: all four commands offline on the tiny assets, metrics merged, bad input -> 2."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from empo.cli import main


@pytest.fixture()
def predictions(tmp_path, eval_examples) -> Path:
    """A predictions file as `empo eval generate` writes it (prediction = another reference)."""
    path = tmp_path / "predictions.jsonl"
    rows = []
    for i, example in enumerate(eval_examples[:8]):
        rows.append({**example, "prediction": eval_examples[i + 1]["reference"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _epitome_args(tiny_assets: Path, source: Path, out: Path, checkpoints: Path | None = None):
    return ["eval", "epitome", "--input", str(source),
            "--checkpoints", str(checkpoints or tiny_assets / "epitome"),
            "--encoder", str(tiny_assets / "epitome" / "encoder"), "--out", str(out)]


def test_all_four_commands_run_offline_and_merge_their_keys(tiny_assets, eval_file, tmp_path,
                                                            adapter, capsys):
    out = tmp_path / "metrics.json"
    out.write_text(json.dumps({"other": 1}))
    predictions = tmp_path / "predictions.jsonl"
    assert main(["eval", "generate", "--model", str(tiny_assets / "model"), "--adapter",
                 str(adapter), "--data", str(eval_file), "--out", str(predictions),
                 "--batch-size", "4", "--max-new-tokens", "8", "--dtype", "float32"]) == 0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 12 and not (tmp_path / "predictions.jsonl.partial").exists()
    per_item = tmp_path / "items.jsonl"
    assert main([*_epitome_args(tiny_assets, predictions, out), "--padding", "max_length",
                 "--batch-size", "3", "--per-item", str(per_item)]) == 0
    items = [json.loads(line) for line in per_item.read_text().splitlines()]
    assert [i["conv_id"] for i in items] == [r["conv_id"] for r in rows]
    assert main(["eval", "bertscore", "--input", str(predictions), "--model",
                 str(tiny_assets / "bertscore"), "--num-layers", "2", "--out", str(out)]) == 0
    assert main(["eval", "mmlu", "--model", str(tiny_assets / "model"), "--adapter", str(adapter),
                 "--tasks", "mmlu_tiny", "--num-fewshot", "1", "--limit", "3", "--include-path",
                 str(tiny_assets / "mmlu"), "--dtype", "float32", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["other"] == 1
    assert {"diff_er", "diff_ex", "diff_ip", "pred_er", "ref_ip", "epitome_n", "fbert",
            "bertscore_precision", "bertscore_recall", "mmlu"} <= set(metrics)
    assert metrics["epitome_n"] == 12
    mean_diff = sum((i["pred_er"] - i["ref_er"]) ** 2 for i in items) / len(items)
    assert metrics["diff_er"] == pytest.approx(mean_diff)
    assert (tmp_path / "mmlu_results.json").is_file()
    assert "mmlu=" in capsys.readouterr().out


def _bad_predictions(kind: str, predictions: Path) -> Path:
    lines = predictions.read_text().splitlines()
    if kind == "missing field":
        row = json.loads(lines[2])
        del row["prediction"]
        lines[2] = json.dumps(row)
    elif kind == "invalid json":
        lines[2] = lines[2][:-5]
    elif kind == "empty":
        lines = []
    predictions.write_text("".join(line + "\n" for line in lines))
    return predictions


@pytest.mark.parametrize("kind, message", [
    ("missing field", "predictions.jsonl:3: missing field(s) prediction"),
    ("invalid json", "predictions.jsonl:3: invalid JSON"),
    ("empty", "predictions is empty"),
])
def test_bad_predictions_exit_2_without_metrics(tiny_assets, predictions, tmp_path, capsys,
                                                kind, message):
    out = tmp_path / "metrics.json"
    _bad_predictions(kind, predictions)
    assert main(_epitome_args(tiny_assets, predictions, out)) == 2
    assert message in capsys.readouterr().err
    assert main(["eval", "bertscore", "--input", str(predictions), "--model",
                 str(tiny_assets / "bertscore"), "--num-layers", "2", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def _broken_checkpoints(kind: str, tiny_assets: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_assets / "epitome", target, ignore=shutil.ignore_patterns("encoder"))
    if kind == "missing file":
        (target / "finetuned_IP.pth").unlink()
    elif kind == "wrong keys":
        state = torch.load(target / "finetuned_EX.pth", weights_only=True)
        state = {k.replace("seeker_encoder.roberta.", "seeker_encoder."): v
                 for k, v in state.items()}
        torch.save(state, target / "finetuned_EX.pth")
    elif kind == "wrong shape":
        state = torch.load(target / "finetuned_ER.pth", weights_only=True)
        state["attn.out.weight"] = torch.zeros(3, 3)
        torch.save(state, target / "finetuned_ER.pth")
    return target


@pytest.mark.parametrize("kind, message", [
    ("missing file", "missing EPITOME checkpoint(s) finetuned_IP.pth"),
    ("wrong keys", "missing keys: seeker_encoder.roberta."),
    ("wrong shape", "attn.out.weight (checkpoint [3, 3], model [32, 32])"),
])
def test_bad_checkpoints_exit_2_without_metrics(tiny_assets, predictions, tmp_path, capsys,
                                                kind, message):
    out = tmp_path / "metrics.json"
    out.write_text(json.dumps({"fbert": 0.5}))
    checkpoints = _broken_checkpoints(kind, tiny_assets, tmp_path)
    assert main(_epitome_args(tiny_assets, predictions, out, checkpoints)) == 2
    assert message in capsys.readouterr().err
    assert json.loads(out.read_text()) == {"fbert": 0.5}


def test_foreign_adapter_exits_2_without_outputs(tiny_assets, eval_file, tmp_path,
                                                 foreign_adapter, capsys):
    predictions = tmp_path / "predictions.jsonl"
    assert main(["eval", "generate", "--model", str(tiny_assets / "model"), "--adapter",
                 str(foreign_adapter), "--data", str(eval_file), "--out", str(predictions)]) == 2
    assert "does not match base model" in capsys.readouterr().err
    out = tmp_path / "metrics.json"
    assert main(["eval", "mmlu", "--model", str(tiny_assets / "model"), "--adapter",
                 str(foreign_adapter), "--tasks", "mmlu_tiny", "--include-path",
                 str(tiny_assets / "mmlu"), "--out", str(out)]) == 2
    assert "does not match base model" in capsys.readouterr().err
    assert not predictions.exists() and not out.exists()


def test_bertscore_local_model_needs_layers(tiny_assets, predictions, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["eval", "bertscore", "--input", str(predictions), "--model",
                 str(tiny_assets / "bertscore"), "--out", str(out)]) == 2
    assert "give its layer count" in capsys.readouterr().err
    assert not out.exists()


def test_eval_options_come_from_the_config_sections(capsys):
    """`empo eval` options are the `eval.*` config fields: same defaults, same checks."""
    import dataclasses

    from empo.cli import build_parser
    from empo.config import BertScoreConfig, GenerationConfig, MMLUConfig

    parser = build_parser()
    for action, cls, fixed in (("generate", GenerationConfig, ["--model", "m", "--data", "d"]),
                               ("bertscore", BertScoreConfig, ["--input", "p"]),
                               ("mmlu", MMLUConfig, ["--model", "m"])):
        args = parser.parse_args(["eval", action, *fixed, "--out", "o"])
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
                else f.default
            assert getattr(args, f.name) == default, (action, f.name)
    from empo.cli import main

    assert main(["eval", "bertscore", "--input", "p.jsonl", "--batch-size", "0",
                 "--out", "metrics.json"]) == 2
    assert "eval.bertscore.batch_size: 0 is out of range" in capsys.readouterr().err
