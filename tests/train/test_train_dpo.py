"""DPO end to end: from the SFT adapter, trl's frozen reference copy, one preference draw per epoch."""
from __future__ import annotations

from collections import Counter

import pytest
from trainutil import read_log

from empo.store import is_done


class DrawRecorder:
    """Wraps the trainer's collator: which (chosen, rejected) pairs each epoch's batches held.

    Balanced sampling uses every candidate equally often, so each draw holds the same rejected
    texts; what a draw changes is which dialogue gets which rejected response, hence the pairs.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.inner = trainer.data_collator
        self.seen: dict[int, Counter] = {}

    def __call__(self, features):
        epoch = int(self.trainer.state.epoch or 0)
        tok = self.trainer.processing_class
        def text(ids):
            return tok.decode(ids, skip_special_tokens=True).strip()

        pairs = [(text(f["chosen_ids"]), text(f["rejected_ids"])) for f in features]
        self.seen.setdefault(epoch, Counter()).update(pairs)
        return self.inner(features)


@pytest.fixture(scope="module")
def dpo_run(make_cfg, sft_run, tmp_path_factory):
    """A 3-epoch DPO run whose batches are recorded; returns (run dir, recorder, cfg)."""
    from empo.train import common
    from empo.train.dpo import build_dpo_trainer

    cfg = make_cfg()
    out = tmp_path_factory.mktemp("dpo") / "seed-1"
    with common.training_env():
        trainer = build_dpo_trainer(cfg, 1, out, sft_run / "adapter")
        recorder = DrawRecorder(trainer)
        trainer.data_collator = recorder
        common.start_stage(cfg, out)
        common.run_training(trainer, out)
    return out, recorder, cfg


@pytest.mark.slow  # tier: reads dpo_run, a 72-step DPO training (58 s on the loaded box)
def test_epoch_k_trains_on_draw_k(dpo_run):
    from empo.train.dpo import preference_dataset

    _, recorder, cfg = dpo_run
    rows, _ = preference_dataset(cfg, seed=1)
    draws = {k: Counter((r["chosen"][0]["content"].strip(), r["rejected"][0]["content"].strip())
                        for r in rows if r["epoch"] == k) for k in range(3)}
    assert len({frozenset(d.items()) for d in draws.values()}) == 3  # the draws differ, so the test can tell
    assert sorted(recorder.seen) == [0, 1, 2]
    for k in range(3):
        assert recorder.seen[k] == draws[k], f"epoch {k} did not see exactly draw {k}"


@pytest.mark.slow  # tier: reads dpo_run, a 72-step DPO training (58 s on the loaded box)
def test_dpo_writes_adapter_log_config_and_done(dpo_run):
    out, _, _ = dpo_run
    assert is_done(out) and (out / "config.yaml").is_file()
    assert sorted(p.name for p in (out / "adapter").iterdir() if p.is_dir()) == []  # no `ref/` copy
    rows = read_log(out)
    assert rows[-1]["step"] == 72 and rows[-1]["epoch"] == pytest.approx(3.0)  # 3 epochs × 192 / 8
    for row in rows:
        assert {"step", "loss", "learning_rate", "grad_norm", "rewards/chosen", "rewards/rejected",
                "rewards/margins", "rewards/accuracies"} <= row.keys()
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference at the start


@pytest.mark.slow  # tier: reads dpo_run, a 72-step DPO training (58 s on the loaded box)
def test_dpo_adapter_continues_the_sft_adapter(dpo_run, sft_run, tiny_assets):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out, _, _ = dpo_run
    base = AutoModelForCausalLM.from_pretrained(tiny_assets / "model", dtype=torch.float32)
    PeftModel.from_pretrained(base, str(out / "adapter"))  # loads
    sft = load_file(sft_run / "adapter" / "adapter_model.safetensors")
    dpo = load_file(out / "adapter" / "adapter_model.safetensors")
    assert sft.keys() == dpo.keys()
    deltas = [(dpo[k] - sft[k]).abs().max().item() for k in sft]
    assert 0 < max(deltas) < 0.1  # moved a little from the SFT adapter, not re-initialised


def test_merged_reference_trains_a_fresh_lora_on_the_merged_sft_model(make_cfg, sft_run, tmp_path):
    from empo.train.dpo import train_dpo

    cfg = make_cfg("dpo.reference=merged", "dpo.num_train_epochs=1", "dpo.trainer_args={max_steps: 4}")
    adapter = train_dpo(cfg, 1, tmp_path / "merged", sft_run / "adapter")
    rows = read_log(tmp_path / "merged")
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert (adapter / "adapter_config.json").is_file()


def test_other_trl_loss_types_are_a_config_switch(make_cfg, sft_run, tmp_path):
    from empo.train import common
    from empo.train.dpo import build_dpo_trainer

    with common.training_env():
        trainer = build_dpo_trainer(make_cfg("dpo.loss_type=ipo", "dpo.beta=0.1"), 1, tmp_path,
                                    sft_run / "adapter")
    assert trainer.loss_types == ["ipo"] and trainer.beta == 0.1


def test_length_percentile_caps_max_length_and_prompts_through_the_collator(make_cfg, sft_run,
                                                                            tmp_path):
    """dpo.length_percentile: max_length = the even p-th percentile cap; each pair reaches trl's
    collator with its prompt cut to the even prompt-length percentile where it is too long."""
    from empo.train import common
    from empo.train.dpo import PromptCap, build_dpo_trainer

    with common.training_env():
        trainer = build_dpo_trainer(make_cfg("dpo.length_percentile=50"), 1, tmp_path,
                                    sft_run / "adapter")
    collate = trainer.data_collator
    assert isinstance(collate, PromptCap) and collate.max_length == trainer.args.max_length
    assert collate.max_length % 2 == 0 and collate.max_prompt_length % 2 == 0
    rows = [trainer.train_dataset.rows[i] for i in range(len(trainer.train_dataset.rows))]
    long = [r for r in rows if len(r["prompt_ids"]) + max(len(r["chosen_ids"]),
                                                          len(r["rejected_ids"])) > collate.max_length]
    assert long, "the tiny data should hold pairs over the median length"
    batch = collate(long[:2])
    prompt_tokens = (batch["completion_mask"] == 0) & (batch["attention_mask"] == 1)
    assert int(prompt_tokens.sum(dim=1).max()) <= collate.max_prompt_length
    assert batch["input_ids"].shape[1] <= collate.max_length
