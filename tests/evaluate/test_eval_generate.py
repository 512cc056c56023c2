"""Generation: batched greedy equals one-at-a-time greedy, resumable, decodes only new tokens."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from empo.errors import EvalError
from empo.evaluate import PREDICTION_FIELDS
from empo.evaluate.generate import (GenerationSettings, generate_batch, generate_predictions,
                                    load_generator, prompt_ids, read_eval_examples)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prompt_is_the_chat_template_with_generation_prompt_and_one_bos(tiny_lm, eval_examples):
    model, tokenizer = tiny_lm
    ids = prompt_ids(tokenizer, eval_examples[0]["prompt"])
    rendered = tokenizer.apply_chat_template(eval_examples[0]["prompt"], tokenize=False,
                                             add_generation_prompt=True)
    assert tokenizer.decode(ids) == rendered
    assert rendered.rstrip().endswith("<|assistant|>")
    # model.add_bos: auto -> the tokenizer's own add_special_tokens puts <s> first: exactly one
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    with_system = prompt_ids(tokenizer, eval_examples[0]["prompt"], system_prompt="Be kind.")
    assert tokenizer.decode(with_system).startswith("<s><|system|>\nBe kind.</s>")


def test_tokenizer_pads_left(tiny_lm):
    assert tiny_lm[1].padding_side == "left"


def test_batched_greedy_equals_one_at_a_time(tiny_lm, eval_examples, tmp_path):
    model, tokenizer = tiny_lm
    examples = eval_examples[:10]
    batched = generate_predictions(examples, tmp_path / "batched.jsonl", model, tokenizer,
                                   GenerationSettings(max_new_tokens=12, batch_size=4),
                                   progress=False)
    single = generate_predictions(examples, tmp_path / "single.jsonl", model, tokenizer,
                                  GenerationSettings(max_new_tokens=12, batch_size=1),
                                  progress=False)
    rows_b, rows_s = _rows(batched), _rows(single)
    assert [r["conv_id"] for r in rows_b] == [e["conv_id"] for e in examples]  # input order
    assert [r["prediction"] for r in rows_b] == [r["prediction"] for r in rows_s]
    assert all(list(r) == list(PREDICTION_FIELDS) for r in rows_b)
    assert all(r["prediction"] for r in rows_b)
    # prompts of different lengths really were batched together (left padding exercised)
    lengths = {len(prompt_ids(tokenizer, e["prompt"])) for e in examples}
    assert len(lengths) > 1


def test_stops_at_eos_and_decodes_only_new_tokens(tiny_lm, eval_examples):
    """Force EOS as the third new token: every response is its first two greedy tokens."""
    model, tokenizer = tiny_lm
    batch = [prompt_ids(tokenizer, e["prompt"]) for e in eval_examples[:3]]
    two_tokens = generate_batch(model, tokenizer, batch, GenerationSettings(max_new_tokens=2))
    calls = {"n": 0}

    def force_eos(module, inputs, output):
        calls["n"] += 1
        if calls["n"] >= 3:
            output[..., tokenizer.eos_token_id] = 1e4
        return output

    handle = model.lm_head.register_forward_hook(force_eos)
    try:
        stopped = generate_batch(model, tokenizer, batch, GenerationSettings(max_new_tokens=20))
    finally:
        handle.remove()
    assert calls["n"] == 3  # generation stopped at EOS, not at max_new_tokens
    assert stopped == two_tokens
    assert not any("<|assistant|>" in text or "</s>" in text for text in stopped)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_generates_only_the_rest(tiny_lm, eval_examples, tmp_path):
    model, tokenizer = tiny_lm
    examples = eval_examples[:10]
    settings = GenerationSettings(max_new_tokens=8, batch_size=4)
    out = tmp_path / "predictions.jsonl"
    partial = tmp_path / "predictions.jsonl.partial"

    def stop_after_first_batch(done, total):
        raise Interrupt

    with pytest.raises(Interrupt):
        generate_predictions(examples, out, model, tokenizer, settings,
                             on_batch=stop_after_first_batch, progress=False)
    assert not out.exists() and partial.exists()
    first = [json.loads(line) for line in partial.read_text().splitlines()[1:]]
    assert len(first) == 4
    with partial.open("a") as handle:  # a torn write from the interruption is tolerated
        handle.write('{"conv_id": "torn')

    seen = []
    generate_predictions(examples, out, model, tokenizer, settings,
                         on_batch=lambda done, total: seen.append(done), progress=False)
    assert seen == [8, 10]  # 4 kept, 6 generated in two batches
    assert not partial.exists()
    clean = generate_predictions(examples, tmp_path / "clean.jsonl", model, tokenizer, settings,
                                 progress=False)
    assert out.read_text() == clean.read_text()


def test_partial_from_other_settings_is_not_reused(tiny_lm, eval_examples, tmp_path):
    model, tokenizer = tiny_lm
    examples = eval_examples[:4]
    out = tmp_path / "predictions.jsonl"

    def stop(done, total):
        raise Interrupt

    with pytest.raises(Interrupt):
        generate_predictions(examples, out, model, tokenizer,
                             GenerationSettings(max_new_tokens=3, batch_size=2),
                             on_batch=stop, progress=False)
    seen = []
    generate_predictions(examples, out, model, tokenizer,
                         GenerationSettings(max_new_tokens=6, batch_size=2),
                         on_batch=lambda done, total: seen.append(done), progress=False)
    assert seen == [2, 4]


def test_adapter_is_applied_and_foreign_adapter_is_refused(tiny_assets, adapter,
                                                           foreign_adapter, tiny_lm,
                                                           eval_examples):
    model, tokenizer = load_generator(str(tiny_assets / "model"), adapter, dtype="float32")
    from peft import PeftModel

    assert isinstance(model, PeftModel)
    batch = [prompt_ids(tokenizer, e["prompt"]) for e in eval_examples[:2]]
    settings = GenerationSettings(max_new_tokens=6)
    assert generate_batch(model, tokenizer, batch, settings) != \
        generate_batch(tiny_lm[0], tiny_lm[1], batch, settings)
    with pytest.raises(EvalError, match="does not match base model"):
        load_generator(str(tiny_assets / "model"), foreign_adapter)
    with pytest.raises(EvalError, match="not a peft adapter"):
        load_generator(str(tiny_assets / "model"), tiny_assets / "epitome")


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ('{"conv_id": "a"\n', ":1: invalid JSON"),
    ('{"conv_id": "a", "emotion": "x", "seeker": "s", "reference": "r"}\n',
     ":1: missing field"),
    ('{"conv_id": "a", "emotion": "x", "seeker": "s", "reference": "r", "prompt": "hi"}\n',
     "prompt must be"),
])
def test_bad_eval_examples_are_named(tmp_path, content, message):
    path = tmp_path / "eval.jsonl"
    path.write_text(content)
    with pytest.raises(EvalError, match=message):
        read_eval_examples(path)


def test_duplicate_conv_ids_are_refused(tmp_path, eval_examples):
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps(eval_examples[0]) + "\n" + json.dumps(eval_examples[0]) + "\n")
    with pytest.raises(EvalError, match="more than once"):
        read_eval_examples(path)
