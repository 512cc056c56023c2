"""vLLM backend: the same prompt token ids as the transformers backend (built by the one shared
path), greedy settings, LoRA rank handling, resumable, refused clearly without vLLM or a GPU."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from empo.errors import EvalError
from empo.evaluate.generate import (GenerationSettings, generate_batch, generate_predictions,
                                    load_generation_tokenizer, load_generator)
from empo.evaluate.vllm_backend import (VLLM_LORA_RANKS, adapter_rank, max_lora_rank,
                                        require_vllm, sampling_kwargs, vllm_inputs)

NO_VLLM_HERE = importlib.util.find_spec("vllm") is None


def _transformers_prompt_ids(model, tokenizer, examples, settings, out):
    """conv_id -> the unpadded input ids the transformers backend hands model.generate."""
    seen: list[list[int]] = []
    original = model.generate

    def spy(input_ids, attention_mask, **kwargs):
        for row, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            seen.append([t for t, m in zip(row, mask) if m])
        return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    model.generate = spy
    try:
        generate_predictions(examples, out, model, tokenizer, settings, progress=False)
    finally:
        del model.generate
    return seen


@pytest.mark.parametrize("add_bos", ["auto", False])
def test_both_backends_build_identical_prompt_token_ids(tiny_assets, eval_examples, tmp_path,
                                                        add_bos):
    base = str(tiny_assets / "model")
    examples = eval_examples[:9]
    settings = GenerationSettings(max_new_tokens=4, batch_size=4, system_prompt="Be kind.")
    model, tokenizer = load_generator(base, dtype="float32", add_bos=add_bos)
    transformers_ids = _transformers_prompt_ids(model, tokenizer, examples, settings,
                                                tmp_path / "hf.jsonl")
    # the vLLM backend's side: its tokenizer loader, the shared partial-file loop, its requests
    vllm_tokenizer = load_generation_tokenizer(base, None, add_bos)
    requests: list[dict] = []

    def vllm_generate(batch_ids):
        requests.extend(vllm_inputs(batch_ids))
        return generate_batch(model, vllm_tokenizer, batch_ids, settings)

    generate_predictions(examples, tmp_path / "vllm.jsonl", None, vllm_tokenizer, settings,
                         generate=vllm_generate, chunk_size=512, progress=False)
    vllm_ids = [r["prompt_token_ids"] for r in requests]
    assert sorted(map(tuple, vllm_ids)) == sorted(map(tuple, transformers_ids))
    assert len(vllm_ids) == len(examples)
    bos = tokenizer.bos_token_id
    assert all(ids.count(bos) == (1 if add_bos == "auto" else 0) for ids in vllm_ids)
    assert all(tokenizer.decode(ids).removeprefix("<s>").startswith("<|system|>\nBe kind.")
               for ids in vllm_ids)
    # same greedy outputs row for row (same engine here; vLLM's own numerics are a GPU check)
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    assert read(tmp_path / "vllm.jsonl") == read(tmp_path / "hf.jsonl")


def test_other_backend_resumes_from_its_own_partial_only(tiny_lm, eval_examples, tmp_path):
    model, tokenizer = tiny_lm
    settings = GenerationSettings(max_new_tokens=4, batch_size=4, backend="vllm")
    calls: list[int] = []

    def flaky(batch_ids):
        calls.append(len(batch_ids))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return generate_batch(model, tokenizer, batch_ids, settings)

    out = tmp_path / "predictions.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate_predictions(eval_examples[:8], out, None, tokenizer, settings, generate=flaky,
                             chunk_size=3, progress=False)
    calls.clear()
    generate_predictions(eval_examples[:8], out, None, tokenizer, settings,
                         generate=lambda ids: calls.append(len(ids)) or
                         generate_batch(model, tokenizer, ids, settings), chunk_size=3,
                         progress=False)
    assert sum(calls) == 5  # the first chunk of 3 was kept
    # a transformers-backend partial is not continued by vLLM (settings.backend is signed)
    partial = out.with_name(out.name + ".partial")
    header = {"partial_of": {"settings": {"backend": "transformers"}}}
    partial.write_text(json.dumps(header) + "\n")
    out.unlink()
    calls.clear()
    generate_predictions(eval_examples[:8], out, None, tokenizer, settings,
                         generate=lambda ids: calls.append(len(ids)) or [""] * len(ids),
                         chunk_size=3, progress=False)
    assert sum(calls) == 8


def test_greedy_sampling_params_match_the_transformers_call():
    greedy = sampling_kwargs(GenerationSettings(max_new_tokens=64), eos_token_id=2, seed=3)
    assert greedy == {"max_tokens": 64, "n": 1, "stop_token_ids": [2], "repetition_penalty": 1.0,
                      "temperature": 0.0}
    sampled = sampling_kwargs(GenerationSettings(do_sample=True, temperature=0.7, top_p=0.9),
                              eos_token_id=2, seed=3)
    assert (sampled["temperature"], sampled["top_p"], sampled["seed"]) == (0.7, 0.9, 3)


def test_lora_rank_above_vllms_largest_is_merged(adapter):
    assert adapter_rank(adapter) == 4
    assert max_lora_rank(4, VLLM_LORA_RANKS) == 8
    assert max_lora_rank(16, VLLM_LORA_RANKS) == 16
    assert max_lora_rank(100, VLLM_LORA_RANKS) == 128
    assert max_lora_rank(1024, VLLM_LORA_RANKS) is None  # the paper's r: merge into the base


@pytest.mark.skipif(not NO_VLLM_HERE, reason="vLLM is installed here")
def test_refused_in_one_line_without_vllm(tiny_assets, tmp_path):
    with pytest.raises(EvalError, match=r"needs the vllm package \(pip install 'empo\[vllm\]'\)"):
        require_vllm()
    from empo.config import load_config
    from empo.evaluate.stages import generate_stage

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "experiments" / "smoke.yaml", [
        f"model.name_or_path={tiny_assets}/model", f"data.source={tiny_assets}/ed",
        f"results_dir={tmp_path}", "eval.generation.backend=vllm"])
    with pytest.raises(EvalError, match="vllm") as err:
        generate_stage(cfg, 1, tmp_path / "run", None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "predictions.jsonl").exists()
