"""GPU performance options (issue 17): attention implementation, trl's padding-free batches, Liger
kernels and DPO reference log-probabilities — names checked without heavy imports (config time),
availability checked where a stage starts, each refused with one clear line where its package
or a GPU is missing.

The trainer options are trl's own config fields, set through `sft.trainer_args` /
`dpo.trainer_args` (`padding_free`, `packing`, `use_liger_kernel`, `precompute_ref_log_probs`);
this module only refuses what cannot work and prepares what trl leaves to its caller.
"""
from __future__ import annotations

import importlib.util
import re
from typing import TYPE_CHECKING, Any

from empo.errors import ConfigError

if TYPE_CHECKING:
    from datasets import Dataset

    from empo.config import ExperimentConfig

# transformers' own attention implementations; anything else must be a Hub kernel repo.
ATTENTION_BUILTINS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
# transformers.integrations.hub_kernels.is_kernel: org/repo[@revision][:function]
HUB_KERNEL = re.compile(r"[^/:@\s]+/[^/:@\s]+(?:@[^/:@\s]+)?(?::[^/:@\s]+)?")
# packages that provide each flash implementation (transformers falls back to `kernels` for both)
FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def is_hub_kernel(name: str | None) -> bool:
    """`org/repo[@revision][:function]`: an attention kernel from the Hub (`kernels` package)."""
    return bool(name) and HUB_KERNEL.fullmatch(name) is not None


def is_flash(name: str | None) -> bool:
    """A flash-attention implementation: varlen kernels that keep padding-free rows apart."""
    if not name:
        return False
    return name.startswith("flash_attention_") or (is_hub_kernel(name) and "flash" in name.lower())


def attention_problem(name: Any) -> str | None:
    """Why `model.attn_implementation` cannot be a valid value (None when it can)."""
    if isinstance(name, str) and (name in ATTENTION_BUILTINS or is_hub_kernel(name)):
        return None
    return (f"must be one of {', '.join(ATTENTION_BUILTINS)} or a Hub kernel repo "
            "(org/repo[@revision][:function], e.g. kernels-community/flash-attn2)")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def require_attention(name: str | None, key: str = "model.attn_implementation") -> None:
    """ConfigError unless `name` can load here: flash needs a CUDA GPU and flash-attn (or the
    `kernels` package, transformers' fallback); a Hub kernel needs `kernels` and a GPU."""
    if not name or name in ("sdpa", "eager", "flex_attention"):
        return
    problem = attention_problem(name)
    if problem:
        raise ConfigError(f"{key}: {name!r} {problem}")
    if name in FLASH_PACKAGES:
        package = FLASH_PACKAGES[name]
        if not (_installed(package) or _installed("kernels")):
            pip = "flash-attn" if name == "flash_attention_2" else "flash-attn-3 (Hopper)"
            raise ConfigError(f"{key}: {name} needs the {package} package (pip install {pip}) or "
                              "the kernels package, and neither is installed; use sdpa")
    elif not _installed("kernels"):
        raise ConfigError(f"{key}: the Hub kernel {name!r} needs the kernels package "
                          "(pip install kernels), which is not installed; use sdpa")
    if not _cuda():
        raise ConfigError(f"{key}: {name} needs a CUDA GPU and none is visible here; use sdpa "
                          "(`empo plan` and `--dry-run` work without a GPU)")


# ----------------------------------------------------------------------------- trainer options


def padding_free(cfg: "ExperimentConfig", stage: str) -> bool:
    """Whether trl will flatten each micro-batch into one row: `padding_free`, or SFT packing with
    a best-fit strategy (trl turns padding-free on for those)."""
    section = getattr(cfg, stage)
    args = section.trainer_args
    packed = section.packs and bool(args.get("packing")) and \
        args.get("packing_strategy", "bfd") in ("bfd", "bfd_split")
    return bool(args.get("padding_free")) or packed


def check_trainer_options(cfg: "ExperimentConfig", stage: str, trl_version: str = "") -> None:
    """ConfigError for a trainer option that cannot work here (called before any weights load)."""
    section = getattr(cfg, stage)
    args = section.trainer_args
    key = f"{stage}.trainer_args"
    for name, why in section.ignored_by_trl.items():
        if args.get(name):
            raise ConfigError(f"{key}.{name}: trl {trl_version or '(installed)'}'s {why}; "
                              "leave it unset")
    if padding_free(cfg, stage):
        attention = cfg.model.attn_implementation
        if not is_flash(attention):
            raise ConfigError(
                f"{key}.padding_free (or packing): needs a flash-attention model.attn_implementation "
                f"(flash_attention_2, flash_attention_3 or a Hub flash kernel), not {attention!r}: "
                "with sdpa or eager the flattened sequences attend to each other")
    if args.get("use_liger_kernel"):
        if not _installed("liger_kernel"):
            raise ConfigError(f"{key}.use_liger_kernel: needs the liger-kernel package "
                              "(pip install liger-kernel), which is not installed")
        if not _cuda():
            raise ConfigError(f"{key}.use_liger_kernel: Liger's Triton kernels need a CUDA GPU "
                              "and none is visible here")


def truncate_rows(dataset: "Dataset", max_length: int) -> "Dataset":
    """trl's own `keep_start` truncation of tokenized SFT rows (input_ids, labels) to
    `max_length`, dropping rows left without a trained token — what trl does when it is given
    max_length, which it refuses together with padding_free unless packing."""
    def cut(example: dict[str, Any]) -> dict[str, Any]:
        return {"input_ids": example["input_ids"][:max_length],
                "labels": example["labels"][:max_length]}

    dataset = dataset.map(cut, desc="Truncating for padding-free batches")
    return dataset.filter(lambda example: any(label != -100 for label in example["labels"]))
