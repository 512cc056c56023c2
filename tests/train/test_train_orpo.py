"""ORPO from the base model: a fresh LoRA of the lora section, no reference, one draw per epoch."""
from __future__ import annotations

from collections import Counter

import pytest

# the smoke sizes (an orpo section is not in smoke.yaml): CPU, no DeepSpeed, tiny batches
ORPO = ["orpo.num_train_epochs=2", "orpo.global_batch_size=8",
        "orpo.per_device_train_batch_size=4", "orpo.max_length=256", "orpo.bf16=false",
        "orpo.gradient_checkpointing=false", "orpo.deepspeed=none", "orpo.learning_rate=1e-4"]


@pytest.mark.slow  # tier: loads the tiny model and builds a trl ORPOTrainer
def test_orpo_trains_a_new_lora_on_the_base_over_one_draw_per_epoch(make_cfg, tmp_path):
    from empo.train import common
    from empo.train.dpo import preference_dataset
    from empo.train.orpo import build_orpo_trainer

    cfg = make_cfg(*ORPO)
    with common.training_env():
        trainer = build_orpo_trainer(cfg, 1, tmp_path / "seed-1")
    assert list(trainer.model.peft_config) == ["default"]  # one adapter, no reference copy
    assert trainer.model.peft_config["default"].r == cfg.lora.r
    assert not hasattr(trainer, "ref_model") or trainer.ref_model is None
    draws = trainer.train_dataset
    tok = trainer.processing_class
    pairs, _ = preference_dataset(cfg, 1, stage="orpo")
    assert draws.num_draws == 2
    def answer(row, key):  # the answer's text after the prompt
        return tok.decode(row[key][len(row["prompt_input_ids"]):], skip_special_tokens=True).strip()

    expected = [Counter((r["chosen"][0]["content"].strip(), r["rejected"][0]["content"].strip())
                        for r in pairs if r["epoch"] == epoch) for epoch in range(2)]
    assert expected[0] != expected[1]  # the draws differ, so the test can tell them apart
    for epoch in range(2):
        draws.select(epoch)
        rows = [draws[i] for i in range(len(draws))]
        assert Counter((answer(r, "chosen_input_ids"), answer(r, "rejected_input_ids"))
                       for r in rows) == expected[epoch]
