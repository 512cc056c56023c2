"""MMLU through lm-eval on the tiny local task, with and without a peft adapter."""
from __future__ import annotations

import json

import pytest

from empo.errors import EvalError
from empo.evaluate.mmlu import clean_results, run_mmlu


def _run(tiny_assets, tmp_path, adapter=None, **kwargs):
    results = tmp_path / "mmlu_results.json"
    metrics = run_mmlu(str(tiny_assets / "model"), adapter, tasks=["mmlu_tiny"],
                       include_path=tiny_assets / "mmlu", dtype="float32",
                       results_path=results, **kwargs)
    return metrics, json.loads(results.read_text())


def test_mmlu_is_the_group_accuracy(tiny_assets, tmp_path):
    metrics, results = _run(tiny_assets, tmp_path, num_fewshot=5)
    assert set(metrics) == {"mmlu"}
    assert metrics["mmlu"] == results["results"]["mmlu_tiny"]["acc,none"]
    subtasks = [results["results"][t] for t in ("mmlu_tiny_arithmetic", "mmlu_tiny_feelings")]
    assert metrics["mmlu"] == pytest.approx(sum(t["acc,none"] for t in subtasks) / 2)
    assert results["n-shot"]["mmlu_tiny_arithmetic"] == 5
    # kept beside metrics.json without environment dumps or the tokenizer's tokens
    assert not {"pretty_env_info", "tokenizer_pad_token", "tokenizer_eos_token",
                "samples"} & set(results)


def test_mmlu_with_adapter(tiny_assets, tmp_path, adapter):
    metrics, results = _run(tiny_assets, tmp_path, adapter=adapter, num_fewshot=1, limit=4)
    assert 0.0 <= metrics["mmlu"] <= 1.0
    assert results["config"]["model_args"]["peft"] == str(adapter)
    assert results["results"]["mmlu_tiny_feelings"]["sample_len"] == 4


def test_adapter_for_another_base_is_refused_before_loading(tiny_assets, tmp_path,
                                                            foreign_adapter):
    with pytest.raises(EvalError, match="does not match base model"):
        _run(tiny_assets, tmp_path, adapter=foreign_adapter)
    assert not (tmp_path / "mmlu_results.json").exists()


@pytest.mark.slow  # tier: lm-eval indexes every task to refuse one (40 s on the loaded box)
def test_unknown_task_is_refused(tiny_assets, tmp_path):
    with pytest.raises(EvalError, match="no task or group mmlu_nope"):
        run_mmlu(str(tiny_assets / "model"), tasks=["mmlu_nope"],
                 include_path=tiny_assets / "mmlu")


def test_clean_results_drops_auth_tokens():
    cleaned = clean_results({"results": {}, "pretty_env_info": "x",
                             "config": {"model_args": {"pretrained": "m", "token": "hf_secret"}}})
    assert cleaned == {"results": {}, "config": {"model_args": {"pretrained": "m"}}}
