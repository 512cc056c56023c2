"""What the performance options change in `empo plan`, and that a stage refuses an unavailable
option before any weights are read."""
from __future__ import annotations

import importlib.util

import pytest

from empo.config import load_config
from empo.errors import ConfigError
from empo.stages import memory_plan as plan_memory
from empo.train.memory import format_plan
from trainutil import PROJECT_ROOT

TABLE1 = PROJECT_ROOT / "configs" / "experiments" / "table1.yaml"


def plan(*overrides: str, stage: str = "sft"):
    return plan_memory(load_config(TABLE1, ["cluster.profile=null", *overrides]), stage, 1, 1)


def test_eager_attention_adds_the_score_matrices():
    sdpa, eager = plan(), plan("model.attn_implementation=eager")
    assert "attention scores (eager)" not in sdpa.memory
    b, heads, s = 4, 32, 256  # table1's sft.max_length; gradient checkpointing: one layer's
    assert eager.memory["attention scores (eager)"] == b * heads * s * s * (4 + 2)  # fp32 + bf16
    no_gc = plan("model.attn_implementation=eager", "sft.gradient_checkpointing=false")
    assert no_gc.memory["attention scores (eager)"] == 32 * b * heads * s * s * 6
    dpo = plan("model.attn_implementation=eager", stage="dpo")
    sequences, s = 2 * dpo.per_device_batch, 1024  # chosen + rejected; table1's dpo.max_length
    assert dpo.memory["attention scores (eager)"] == sequences * heads * s * s * 6
    assert "attention          eager" in format_plan(eager)


def test_liger_removes_one_intermediate_activation_per_token_and_layer():
    base = plan("sft.gradient_checkpointing=false")
    liger = plan("sft.gradient_checkpointing=false", "sft.trainer_args={use_liger_kernel: true}")
    tokens, layers, i = 4 * 256, 32, 14336  # 4 sequences of table1's sft.max_length
    assert base.memory["activations"] - liger.memory["activations"] == tokens * layers * i * 2
    assert "Liger" in format_plan(liger)


def test_padding_free_and_precompute_are_named_and_leave_the_worst_case():
    pf = plan("model.attn_implementation=flash_attention_2", "sft.trainer_args={padding_free: true}")
    assert pf.memory == plan().memory and "padding-free" in format_plan(pf)
    pre = plan("dpo.trainer_args={precompute_ref_log_probs: true}", stage="dpo")
    assert pre.memory == plan(stage="dpo").memory and "precomputed" in format_plan(pre)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="Liger installed")
def test_sft_stage_refuses_liger_before_loading_weights(make_cfg, tmp_path, monkeypatch):
    from empo import models
    from empo.train.sft import build_sft_trainer

    def no_load(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(models, "load_base_model", no_load)
    with pytest.raises(ConfigError, match="liger-kernel"):
        build_sft_trainer(make_cfg("sft.trainer_args={use_liger_kernel: true}"), 1, tmp_path)


def test_dpo_stage_refuses_padding_free(make_cfg, sft_run, tmp_path):
    from empo.train.dpo import build_dpo_trainer

    with pytest.raises(ConfigError, match="padding_free"):
        build_dpo_trainer(make_cfg("dpo.trainer_args={padding_free: true}"), 1, tmp_path,
                          sft_run / "adapter")
