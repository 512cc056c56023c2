"""GPU performance options: attention names, trainer options refused clearly where a package or
a GPU is missing (this machine has neither), trl's truncation for padding-free rows."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from empo.config import load_config
from empo.errors import ConfigError
from empo.options import (attention_problem, check_trainer_options, is_flash, padding_free,
                          require_attention, truncate_rows)

ROOT = Path(__file__).resolve().parents[1]
TABLE1 = ROOT / "configs" / "experiments" / "table1.yaml"
HAS_CUDA = importlib.util.find_spec("torch") is not None and __import__("torch").cuda.is_available()


def cfg(*overrides: str):
    return load_config(TABLE1, ["cluster.profile=null", *overrides])


@pytest.mark.parametrize("name", ["sdpa", "eager", "flash_attention_2", "flash_attention_3",
                                  "flex_attention", "kernels-community/flash-attn2",
                                  "kernels-community/flash-attn@main:flash_attn_varlen_func"])
def test_attention_names_transformers_accepts(name):
    assert attention_problem(name) is None
    assert cfg(f"model.attn_implementation={name}").model.attn_implementation == name


@pytest.mark.parametrize("name", ["flash2", "a/b/c", "flash_attention_1 ", ""])
def test_unknown_attention_is_a_config_error(name):
    with pytest.raises(ConfigError, match="model.attn_implementation.*sdpa, eager"):
        cfg(f"model.attn_implementation='{name}'")


def test_unknown_generation_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="eval.generation.backend.*transformers or vllm"):
        cfg("eval.generation.backend=tgi")


def test_flash_kinds():
    assert is_flash("flash_attention_2") and is_flash("kernels-community/flash-attn3")
    assert not is_flash("sdpa") and not is_flash("kernels-community/paged-attention")


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is visible")
@pytest.mark.parametrize("name, message", [
    ("flash_attention_2", r"(flash_attn package|CUDA GPU)"),
    ("kernels-community/flash-attn2", r"(kernels package|CUDA GPU)"),
])
def test_flash_refused_in_one_line_without_gpu_or_package(name, message):
    require_attention("sdpa")
    require_attention("eager")
    with pytest.raises(ConfigError, match=message) as err:
        require_attention(name)
    assert "\n" not in str(err.value)


def test_padding_free_needs_flash_attention():
    c = cfg("sft.trainer_args={padding_free: true}")
    assert padding_free(c, "sft")
    with pytest.raises(ConfigError, match="flattened sequences attend to each other"):
        check_trainer_options(c, "sft")
    packed = cfg("sft.trainer_args={packing: true}")
    assert padding_free(packed, "sft")  # trl's bfd packing is padding-free
    assert not padding_free(cfg("sft.trainer_args={packing: true, packing_strategy: wrapped}"), "sft")
    check_trainer_options(cfg("model.attn_implementation=flash_attention_2",
                              "sft.trainer_args={padding_free: true}"), "sft")


def test_dpo_padding_free_is_refused_because_trl_ignores_it():
    with pytest.raises(ConfigError, match="DPOTrainer ignores it"):
        check_trainer_options(cfg("model.attn_implementation=flash_attention_2",
                                  "dpo.trainer_args={padding_free: true}"), "dpo", "1.16.0")


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None and HAS_CUDA,
                    reason="Liger can run here")
def test_liger_refused_without_package_or_gpu():
    with pytest.raises(ConfigError, match="use_liger_kernel: (needs the liger-kernel package|"
                                          "Liger's Triton kernels need a CUDA GPU)"):
        check_trainer_options(cfg("sft.trainer_args={use_liger_kernel: true}"), "sft")


def test_truncate_rows_is_trls_keep_start_truncation():
    from datasets import Dataset

    rows = Dataset.from_list([
        {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, 3, 4, 5]},
        {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, -100, 4, 5]},  # nothing left
        {"input_ids": [1, 2], "labels": [-100, 2]},
    ])
    cut = truncate_rows(rows, 3)
    assert cut["input_ids"] == [[1, 2, 3], [1, 2]]
    assert cut["labels"] == [[-100, -100, 3], [-100, 2]]
