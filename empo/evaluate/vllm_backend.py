"""vLLM generation backend (`eval.generation.backend: vllm`, the `vllm` extra, one CUDA GPU).

Same prompts as the transformers backend: the tokenizer comes from `load_generation_tokenizer`,
the prompt ids from `prompt_ids` (chat template, BOS from the template, system prompt), and vLLM
is handed those ids (`{"prompt_token_ids": ...}`), so it never tokenizes or adds a BOS itself.
Greedy by default (temperature 0), stop at EOS, responses decoded by `decode_response`; rows go
through `generate_predictions`, so the run is resumable from predictions.jsonl.partial exactly
like the transformers path. The adapter goes through vLLM's LoRA (`enable_lora`,
`max_lora_rank` = the smallest rank vLLM supports that holds it, one `LoRARequest`); an adapter
whose rank is above vLLM's largest (the paper's r=1024 > 512) is merged into the base first, into
a directory beside the predictions that is removed afterwards, and the log says so.
vLLM is imported inside the functions: the core install does not need it.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from empo.errors import EvalError
from empo.evaluate.generate import decode_response, generate_predictions, load_generation_tokenizer
from empo.models import check_adapter

log = logging.getLogger(__name__)

# vllm.config.lora.MaxLoRARanks (vLLM >= 0.10); read from vLLM itself when it is installed
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
CHUNK = 512  # prompts per vLLM call: one partial-file flush each (vLLM batches inside a call)
MERGED_DIR = ".vllm-merged-model"


def require_vllm() -> None:
    """EvalError unless vLLM is installed and a CUDA GPU is visible."""
    if importlib.util.find_spec("vllm") is None:
        raise EvalError("eval.generation.backend: vllm needs the vllm package (pip install "
                        "'empo[vllm]'), which is not installed; use backend: transformers")
    import torch

    if not torch.cuda.is_available():
        raise EvalError("eval.generation.backend: vllm needs a CUDA GPU and none is visible here; "
                        "use backend: transformers")


def lora_ranks() -> tuple[int, ...]:
    """The max_lora_rank values the installed vLLM accepts."""
    try:
        from vllm.config.lora import MaxLoRARanks

        return tuple(sorted(typing.get_args(MaxLoRARanks)))
    except (ImportError, AttributeError):
        return VLLM_LORA_RANKS


def adapter_rank(adapter: Path) -> int:
    """The largest LoRA rank in a peft adapter (r, or a larger rank_pattern value)."""
    try:
        config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise EvalError(f"adapter {adapter}: cannot read adapter_config.json ({err})") from None
    ranks = [int(config.get("r") or 0), *map(int, (config.get("rank_pattern") or {}).values())]
    return max(ranks)


def max_lora_rank(rank: int, supported: Sequence[int] = VLLM_LORA_RANKS) -> int | None:
    """The smallest vLLM max_lora_rank that holds `rank`; None when none does (merge first)."""
    fitting = [r for r in sorted(supported) if r >= rank]
    return fitting[0] if fitting else None


def sampling_kwargs(settings: Any, eos_token_id: int, seed: int | None) -> dict[str, Any]:
    """vllm.SamplingParams arguments matching the transformers backend's generate() call:
    greedy = temperature 0; max_new_tokens new tokens; stop at EOS."""
    kwargs: dict[str, Any] = {"max_tokens": settings.max_new_tokens, "n": 1,
                              "stop_token_ids": [eos_token_id], "repetition_penalty": 1.0}
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=-1, seed=seed)
    else:
        kwargs.update(temperature=0.0)
    return kwargs


def vllm_inputs(batch_ids: Sequence[Sequence[int]]) -> list[dict[str, list[int]]]:
    """vLLM token prompts (TokensPrompt dicts) carrying the shared prompt ids unchanged."""
    return [{"prompt_token_ids": [int(i) for i in ids]} for ids in batch_ids]


def merge_for_vllm(base: str, adapter: Path, dtype: str, out_dir: Path, tokenizer: Any) -> Path:
    """The base with the adapter merged in, saved to `out_dir` (safetensors + the tokenizer)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    del model
    return out_dir


def generate_vllm(examples: list[dict[str, Any]], out: Path, base: str, adapter: Path | None,
                  settings: Any, signature: dict[str, Any], dtype: str = "auto",
                  chat_template: str | None = None, add_bos: bool | str = "auto",
                  seed: int | None = None, quantization: str = "none",
                  attn_implementation: str | None = None) -> Path:
    """predictions.jsonl for `examples` with vLLM (resumable); see the module docstring."""
    if quantization not in (None, "none"):
        raise EvalError(f"eval.generation.backend: vllm does not load model.quantization "
                        f"{quantization}; use backend: transformers")
    require_vllm()
    if attn_implementation not in (None, "sdpa", "flash_attention_2"):
        log.warning("model.attn_implementation %s does not apply to vLLM (it picks its own "
                    "attention backend)", attn_implementation)
    settings.check()
    tokenizer = load_generation_tokenizer(base, chat_template, add_bos)
    model_path, lora_rank, merged = base, None, None
    if adapter is not None:
        check_adapter(base, adapter)
        rank = adapter_rank(adapter)
        lora_rank = max_lora_rank(rank, lora_ranks())
        if lora_rank is None:
            merged = Path(out).parent / MERGED_DIR
            log.warning("adapter %s has LoRA rank %d, above vLLM's largest max_lora_rank (%d): "
                        "merging it into the base for vLLM (%s, removed afterwards)", adapter,
                        rank, max(lora_ranks()), merged)
            model_path = str(merge_for_vllm(base, Path(adapter), dtype, merged, tokenizer))
    from vllm import LLM, SamplingParams

    engine_kwargs: dict[str, Any] = {"model": model_path, "tokenizer": model_path, "dtype": dtype,
                                     "seed": 0 if seed is None else seed}
    if lora_rank is not None:
        engine_kwargs.update(enable_lora=True, max_lora_rank=lora_rank, max_loras=1)
    llm = LLM(**engine_kwargs)
    request = None
    if lora_rank is not None:
        from vllm.lora.request import LoRARequest

        request = LoRARequest("adapter", 1, str(adapter))
    sampling = SamplingParams(**sampling_kwargs(settings, tokenizer.eos_token_id, seed))

    def generate(batch_ids: list[list[int]]) -> list[str]:
        outputs = llm.generate(vllm_inputs(batch_ids), sampling, lora_request=request,
                               use_tqdm=False)
        return [decode_response(tokenizer, o.outputs[0].token_ids) for o in outputs]

    signature = {**signature, "backend": "vllm", "merged_adapter": merged is not None}
    try:
        return generate_predictions(examples, out, None, tokenizer, settings,
                                    signature=signature, generate=generate,
                                    chunk_size=max(CHUNK, settings.batch_size))
    finally:
        if merged is not None:
            shutil.rmtree(merged, ignore_errors=True)
