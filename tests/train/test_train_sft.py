"""SFT end to end on the tiny model: run store outputs, a loadable adapter, DONE is final."""
from __future__ import annotations

import yaml
from trainutil import read_log

from empo.store import is_done


def test_sft_writes_the_run_store_outputs(sft_run, make_cfg):
    assert is_done(sft_run)
    assert (sft_run / "adapter" / "adapter_config.json").is_file()
    assert (sft_run / "adapter" / "adapter_model.safetensors").is_file()
    assert not (sft_run / "checkpoints").exists()  # dropped once DONE
    written = yaml.safe_load((sft_run / "config.yaml").read_text())
    assert written == make_cfg().to_dict()


def test_sft_train_log_has_step_loss_lr_and_grad_norm(sft_run):
    rows = read_log(sft_run)
    assert rows[0]["step"] == 1 and rows[-1]["step"] == 24  # 192 dialogues / global batch 8
    for row in rows:
        assert {"step", "loss", "learning_rate", "grad_norm"} <= row.keys()
        assert row["loss"] > 0
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)


def test_sft_adapter_loads_with_peft_and_matches_the_lora_config(sft_run, tiny_assets):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_assets / "model", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(sft_run / "adapter"))
    config = model.peft_config["default"]
    assert config.r == 16 and config.lora_alpha == 4
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"}
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained and any(p.abs().sum() > 0 for p in trained)  # B starts at zero: it was trained
    tokenizer_template = (sft_run / "adapter" / "chat_template.jinja").read_text()
    from empo.models import ZEPHYR_CHAT_TEMPLATE

    # the stock one (with the BOS model.add_bos puts in front), not the training one
    assert tokenizer_template.strip().removeprefix("{{ bos_token }}") == ZEPHYR_CHAT_TEMPLATE.strip()


def test_a_done_stage_is_never_retrained_or_overwritten(sft_run, make_cfg, monkeypatch):
    from empo.train import sft

    before = {p: p.stat().st_mtime_ns for p in sft_run.rglob("*")}

    def refuse(*args, **kwargs):
        raise AssertionError("a DONE stage was rebuilt")

    monkeypatch.setattr(sft, "build_sft_trainer", refuse)
    assert sft.train_sft(make_cfg("sft.learning_rate=0.5"), 1, sft_run) == sft_run / "adapter"
    assert {p: p.stat().st_mtime_ns for p in sft_run.rglob("*")} == before
