"""The authors'-code preset: it loads and validates, sources every value, and `empo plan`
accounts for its 4-bit base; the paper-text defaults stay as the paper says."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from empo.config import load_config
from empo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "experiments" / "table1_authors_code.yaml"
TABLE1 = ROOT / "configs" / "experiments" / "table1.yaml"


def test_preset_loads_with_the_authors_values():
    cfg = load_config(PRESET)
    assert (cfg.model.quantization, cfg.model.add_bos) == ("nf4", "auto")
    assert (cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.lora_dropout) == (1024, 256, 0.1)
    assert cfg.lora.modules_to_save == ["embed_tokens", "lm_head"]
    assert (cfg.sft.max_length, cfg.sft.max_grad_norm, cfg.sft.warmup_ratio) == (256, 0.3, 0.0)
    assert (cfg.dpo.warmup_ratio, cfg.dpo.max_grad_norm, cfg.dpo.length_percentile) == (0.1, 0.3, 95)
    assert cfg.eval.generation.max_new_tokens == 200 and cfg.eval.drop_empty_predictions
    assert cfg.system_prompt("sft") is None
    assert cfg.system_prompt("dpo").startswith("You are a friendly assistant, who provides "
                                               "empathetic responses to the user. The responses")
    assert cfg.system_prompt("eval").endswith("Avoid repeating the prompt.")


def test_every_preset_value_names_its_source():
    """Each key: value line carries a comment (a file:line of the authors' code, text or ours)."""
    for number, line in enumerate(PRESET.read_text().splitlines(), start=1):
        if re.match(r"^\s+[a-z_]+: \S", line) and "profile:" not in line:
            assert "#" in line, f"{PRESET.name}:{number} has no source comment: {line.strip()}"


def test_paper_text_defaults_are_unchanged():
    cfg = load_config(TABLE1)
    assert (cfg.model.quantization, cfg.lora.modules_to_save, cfg.dpo.length_percentile) == \
        ("none", [], None)
    assert (cfg.sft.warmup_ratio, cfg.dpo.warmup_ratio, cfg.eval.drop_empty_predictions) == \
        (0.0, 0.0, False)
    assert all(cfg.system_prompt(s) is None for s in ("sft", "dpo", "eval"))


@pytest.mark.parametrize("override, match", [("model.add_bos=maybe", "model.add_bos"),
                                             ("model.quantization=int8", "model.quantization"),
                                             ("dpo.length_percentile=0", "length_percentile")])
def test_bad_values_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(PRESET, [override])


def test_plan_accounts_for_the_nf4_base_and_the_saved_modules():
    from empo.train.memory import plan_memory

    quantized = plan_memory(load_config(PRESET), "sft")
    full = plan_memory(load_config(PRESET, ["model.quantization=none", "lora.modules_to_save=[]"]),
                       "sft")
    assert quantized.memory["base weights (nf4)"] < full.memory["base weights"] / 3
    vocab_by_hidden = 32000 * 4096
    assert quantized.lora_params - full.lora_params == 2 * vocab_by_hidden


def test_nf4_is_refused_with_a_clear_message_without_bitsandbytes_or_cuda():
    import importlib.util

    import torch

    from empo.models import quantization_config

    if importlib.util.find_spec("bitsandbytes") and torch.cuda.is_available():
        pytest.skip("bitsandbytes and CUDA are here: nf4 loads")
    with pytest.raises(ConfigError, match="model.quantization: nf4 needs"):
        quantization_config("nf4", "bfloat16")
