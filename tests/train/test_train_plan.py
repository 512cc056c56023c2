"""`empo plan`: exact parameter counts and the composition of the per-GPU memory estimate."""
from __future__ import annotations

import subprocess
import sys

import pytest
from trainutil import PROJECT_ROOT, subprocess_env

from empo.config import load_config
from empo.stages import memory_plan as plan_memory
from empo.train.memory import GIB, format_plan

TABLE1 = PROJECT_ROOT / "configs" / "experiments" / "table1.yaml"
PAPER_LORA = 2_684_354_560  # r=1024 on all seven projections of Mistral-7B
SAVED_MODULES = 2 * 32000 * 4096  # modules_to_save: full copies of embed_tokens and lm_head
MISTRAL_7B = 7_241_732_096


@pytest.mark.slow  # tier: a CLI subprocess importing deepspeed (23 s on the loaded box)
def test_cli_prints_the_paper_sft_numbers_without_loading_weights():
    proc = subprocess.run([sys.executable, "-m", "empo.cli", "plan", str(TABLE1)], capture_output=True,
                          text=True, env=subprocess_env(), cwd=PROJECT_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"{PAPER_LORA + SAVED_MODULES:,}" in proc.stdout and "7,241,732,096" in proc.stdout
    assert "full copies of embed_tokens, lm_head" in proc.stdout
    assert "ZeRO-2" in proc.stdout and "verdict: fits in 80 GiB" in proc.stdout


def test_paper_sft_and_dpo_plans_compose_deepspeeds_estimators():
    cfg = load_config(TABLE1)
    sft = plan_memory(cfg, "sft", gpus_per_node=2, nodes=1)
    trainable = PAPER_LORA + SAVED_MODULES  # table1 trains embed_tokens/lm_head as pipe_sft.py did
    assert (sft.base_params, sft.lora_params) == (MISTRAL_7B, trainable)
    assert sft.memory["base weights"] == 2 * MISTRAL_7B  # frozen bf16 base, replicated in ZeRO-2
    assert sft.memory["LoRA states"] == 2 * trainable + 18 * trainable // 2  # DeepSpeed ZeRO-2 estimator
    assert sft.gradient_accumulation == 8  # 64 = 4 × 8 × 2
    dpo = plan_memory(cfg, "dpo", gpus_per_node=2, nodes=1)
    assert dpo.memory["DPO reference (adapter copy)"] == 2 * trainable
    assert dpo.sequences_per_micro_batch == 4  # 2 pairs: chosen + rejected
    merged = plan_memory(load_config(TABLE1, ["dpo.reference=merged"]), "dpo", 2, 1)
    assert "DPO reference (adapter copy)" not in merged.memory


def test_zero3_partitions_and_offload_moves_optimizer_states():
    z3 = plan_memory(load_config(TABLE1, ["sft.deepspeed=zero3"]), "sft", gpus_per_node=8, nodes=2)
    assert z3.zero_stage == 3 and z3.gpus == 16
    assert z3.memory["base weights"] == 2 * MISTRAL_7B // 16
    assert z3.memory["LoRA states"] == 4 * 32000 * 4096 + int(18 * (PAPER_LORA + SAVED_MODULES) / 16)
    off = plan_memory(load_config(TABLE1, ["sft.deepspeed=zero2_offload"]), "sft", gpus_per_node=1, nodes=1)
    assert off.offload_optimizer and off.memory["LoRA states"] == 2 * (PAPER_LORA + SAVED_MODULES)
    assert off.cpu_memory > 16 * (PAPER_LORA + SAVED_MODULES)


def test_gradient_checkpointing_and_batch_drive_activations():
    on = plan_memory(load_config(TABLE1), "sft", 2, 1).memory["activations"]
    off = plan_memory(load_config(TABLE1, ["sft.gradient_checkpointing=false"]), "sft", 2, 1).memory["activations"]
    double = plan_memory(load_config(TABLE1, ["sft.per_device_train_batch_size=8"]), "sft", 2, 1)
    assert off > 10 * on
    assert double.memory["activations"] == 2 * on


def test_verdict_against_the_configured_gpu_memory():
    small = plan_memory(load_config(TABLE1, ["cluster.gpu_memory_gb=24"]), "sft", 1, 1)
    assert not small.fits
    text = format_plan(small, "table1")
    assert "does NOT fit in 24 GiB" in text and "zero3" in text
    assert plan_memory(load_config(TABLE1), "sft", 2, 1).fits


def test_plan_counts_equal_what_peft_builds_on_the_tiny_model(make_cfg, tiny_assets):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from empo.models import lora_config

    cfg = make_cfg("lora.r=8", "lora.target_modules=[q_proj, v_proj, down_proj]")
    plan = plan_memory(cfg, "sft", 1, 1)
    model = AutoModelForCausalLM.from_pretrained(tiny_assets / "model", dtype=torch.float32)
    assert plan.base_params == sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, lora_config(cfg))
    assert plan.lora_params == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert plan.total / GIB < 1


def test_plan_rejects_unknown_target_modules_listing_the_models_modules():
    from empo.errors import TrainError

    with pytest.raises(TrainError, match="no module 'qproj'.*did you mean 'q_proj'.*down_proj, embed_tokens"):
        plan_memory(load_config(TABLE1, ["lora.target_modules=[qproj]"]), "sft", 2, 1)
