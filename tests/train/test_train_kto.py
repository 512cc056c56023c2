"""KTO from the SFT adapter: each draw's pairs unpaired, chosen desirable and rejected undesirable."""
from __future__ import annotations

from collections import Counter

import pytest

# the smoke sizes (a kto section is not in smoke.yaml): CPU, no DeepSpeed, tiny batches
KTO = ["kto.num_train_epochs=2", "kto.global_batch_size=8", "kto.per_device_train_batch_size=4",
       "kto.max_length=256", "kto.bf16=false", "kto.gradient_checkpointing=false",
       "kto.deepspeed=none", "kto.learning_rate=1e-4"]


@pytest.mark.slow  # tier: needs the shared SFT run (trains) and builds a trl KTOTrainer
def test_each_epoch_holds_its_draw_chosen_desirable_rejected_undesirable(make_cfg, sft_run,
                                                                           tmp_path):
    from empo.train import common
    from empo.train.dpo import preference_dataset
    from empo.train.kto import build_kto_trainer

    cfg = make_cfg(*KTO)
    with common.training_env():
        trainer = build_kto_trainer(cfg, 1, tmp_path / "seed-1", sft_run / "adapter")
    draws = trainer.train_dataset
    tok = trainer.processing_class
    pairs, _ = preference_dataset(cfg, 1, stage="kto")
    assert draws.num_draws == 2 and len(draws) == 2 * (len(pairs) // 2)  # two answers a pair
    def text(ids):
        return tok.decode(ids, skip_special_tokens=True).strip()

    def prompt(messages):  # the prompt as trl tokenizes it (the chat template, no special tokens)
        return text(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))

    expected = [{label: Counter((prompt(r["prompt"]), r[key][0]["content"].strip())
                                for r in pairs if r["epoch"] == epoch)
                 for label, key in ((True, "chosen"), (False, "rejected"))} for epoch in range(2)]
    assert expected[0][False] != expected[1][False]  # the draws differ, so the test can tell
    for epoch in range(2):
        draws.select(epoch)
        seen = {True: Counter(), False: Counter()}
        for i in range(len(draws)):
            row = draws[i]
            seen[bool(row["label"])][(text(row["prompt_ids"]), text(row["completion_ids"]))] += 1
        assert seen == expected[epoch]
    assert trainer.ref_model is None and "ref" in trainer.model.peft_config  # frozen SFT copy
