"""Prompts per stage: the system prompt of SFT, DPO and eval, and one BOS that training and
generation agree on (`model.add_bos`), on the tiny model."""
from __future__ import annotations

import pytest

from empo import models
from empo.train import common
from empo.errors import ConfigError

SYSTEM = "You are a friendly assistant."


def generation_ids(cfg, example):
    """The token ids generation feeds the model for one eval example (the eval stage's path)."""
    from empo.evaluate.generate import load_generator, prompt_ids

    _, tokenizer = load_generator(cfg.local_or_name(cfg.model.name_or_path), dtype="float32",
                                  add_bos=cfg.model.add_bos)
    return prompt_ids(tokenizer, example["prompt"]), tokenizer


@pytest.mark.parametrize("add_bos", ["auto", True, False])
def test_sft_prompt_part_equals_the_generation_prompt(make_cfg, add_bos, tmp_path):
    """trl's SFT tokenization of a dialogue starts with exactly the ids generation builds for its
    prompt (BOS per model.add_bos, the system prompt, the turns, the assistant header)."""
    from empo.evaluate.stages import eval_examples
    from empo.train.sft import build_sft_trainer

    cfg = make_cfg(f"data.system_prompt={SYSTEM}", f"model.add_bos={str(add_bos).lower()}",
                   "data.train_split=test")  # the same dialogues for both stages
    with common.training_env():
        trainer = build_sft_trainer(cfg, seed=1, out_dir=tmp_path / "sft")
    sft = {row["conv_id"]: row["input_ids"] for row in trainer.train_dataset}
    example = eval_examples(cfg)[0]
    ids, tokenizer = generation_ids(cfg, example)
    bos = tokenizer.bos_token_id
    assert sft[example["conv_id"]][:len(ids)] == ids
    assert ids.count(bos) == (0 if add_bos is False else 1)
    assert (ids[0] == bos) is (add_bos is not False)
    assert tokenizer.decode(ids).removeprefix("<s>").startswith(f"<|system|>\n{SYSTEM}</s>")


def test_stage_system_prompts_dpo_and_eval_carry_it_sft_does_not(make_cfg):
    from trl.data_utils import _tokenize  # what trl's DPOTrainer tokenizes prompts with

    from empo.evaluate.stages import eval_examples
    from empo.train.dpo import preference_dataset
    from empo.train.sft import sft_dataset

    cfg = make_cfg(f"dpo.system_prompt={SYSTEM}", f"eval.system_prompt={SYSTEM}",
                   "data.system_prompt=Never used.", 'sft.system_prompt=""')
    assert all(m["role"] != "system" for row in sft_dataset(cfg) for m in row["messages"])
    rows, cutoff = preference_dataset(cfg, seed=1)
    assert cutoff is None
    assert all(row["prompt"][0] == {"role": "system", "content": SYSTEM} for row in rows)
    example = eval_examples(cfg)[0]
    assert example["prompt"][0] == {"role": "system", "content": SYSTEM}
    # DPO's prompt ids (trl) equal generation's for the same dialogue
    tokenizer = models.load_tokenizer(cfg, padding_side="left")
    row = next(r for r in rows if r["conv_id"] == rows[0]["conv_id"])
    dpo_ids = _tokenize(tokenizer, row["prompt"], add_generation_prompt=True)["input_ids"]
    assert dpo_ids[0] == tokenizer.bos_token_id and dpo_ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(dpo_ids).startswith(f"<s><|system|>\n{SYSTEM}</s>")


def test_system_prompt_falls_back_to_data_and_empty_means_none(make_cfg):
    cfg = make_cfg("data.system_prompt=Shared.", "eval.system_prompt=Own.", 'sft.system_prompt=""')
    assert (cfg.system_prompt("sft"), cfg.system_prompt("dpo"), cfg.system_prompt("eval")) == \
        (None, "Shared.", "Own.")


def test_set_bos_is_idempotent_and_never_adds_a_second(tiny_assets):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_assets / "model")
    assert models.tokenizer_adds_bos(tok) and not models.template_writes_bos(tok)
    messages = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        assert models.set_bos(tok, "auto") is True
        assert tok.apply_chat_template(messages, tokenize=False).count("<s>") == 1
    assert models.training_template(tok.chat_template).startswith(models.BOS_PREFIX)
    assert models.set_bos(tok, False) is False
    assert "<s>" not in tok.apply_chat_template(messages, tokenize=False)
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}x"
    tok.chat_template = "<s>" + tok.chat_template[len(models.BOS_PREFIX):]  # written literally
    with pytest.raises(ConfigError, match="writes the BOS token itself"):
        models.set_bos(tok, False)


def test_dpo_length_percentile_drops_long_pairs_from_every_draw(make_cfg):
    from empo.train.dpo import preference_dataset

    cfg = make_cfg("dpo.length_percentile=50")
    tokenizer = models.load_tokenizer(cfg, padding_side="left")
    rows, caps = preference_dataset(cfg, seed=1, tokenizer=tokenizer)
    everything, _ = preference_dataset(make_cfg(), seed=1)
    per_epoch = [sum(1 for r in rows if r["epoch"] == k) for k in range(cfg.dpo.num_train_epochs)]
    assert len(set(per_epoch)) == 1 and 0 < per_epoch[0] < len(everything) // 3
    assert 0 < caps.max_prompt_length < caps.max_length


def test_cap_prompt_truncates_as_trl_0_8_did():
    """Prompt cut to its last max_prompt_length tokens only where prompt + the longer answer is
    over max_length; the answers cut to max_length - max_prompt_length only if still over."""
    from empo.data.preference import cap_prompt

    prompt = list(range(10))
    assert cap_prompt(prompt, [1, 2], [3], 12, 4) == (prompt, [1, 2], [3])        # fits: as is
    assert cap_prompt(prompt, [1, 2, 3], [4], 12, 4) == ([6, 7, 8, 9], [1, 2, 3], [4])
    assert cap_prompt(prompt, list(range(20)), [4], 12, 4) == (
        [6, 7, 8, 9], list(range(8)), [4])                                         # answers cut too


def test_prompt_cap_collator_feeds_trl_the_truncated_pairs():
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from empo.train.dpo import PromptCap

    collate = PromptCap(DataCollatorForPreference(pad_token_id=0, max_length=8), 8, 4)
    batch = collate([{"prompt_ids": list(range(1, 11)), "chosen_ids": [21, 22, 23],
                      "rejected_ids": [31, 32]}])
    assert batch["input_ids"].tolist() == [[7, 8, 9, 10, 21, 22, 23], [7, 8, 9, 10, 31, 32, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1, 0]]


def test_length_cutoff_is_the_larger_truncated_percentile():
    from empo.data.preference import length_cutoff

    assert length_cutoff([10, 20, 30, 40], [1, 2, 3, 100], 95) == 85  # int(85.6) from rejected
    assert length_cutoff([10, 20, 30, 40], [1, 2, 3, 4], 50) == 25
