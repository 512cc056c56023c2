"""Batched, resumable response generation for the eval split (transformers backend).

Prompts are rendered with the tokenizer's chat template (+ generation prompt) and tokenized without
added special tokens, as trl does in training; the BOS comes from the template (`models.set_bos`).
Batches are formed by prompt length with left padding; greedy by default; only the new tokens are
decoded. Finished rows are appended to `<out>.partial` after every batch, so a rerun generates
only what is missing.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from empo.config import GenerationConfig
from empo.errors import EvalError
from empo.evaluate import PREDICTION_FIELDS, read_jsonl
from empo.models import check_adapter, load_adapter, load_causal_lm, load_tokenizer_from
from empo.store import atomic_write_jsonl

log = logging.getLogger(__name__)

EXAMPLE_FIELDS = ("conv_id", "emotion", "seeker", "prompt", "reference")
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class GenerationSettings(GenerationConfig):
    """What `generate()` is asked for: the `eval.generation` fields plus the system prompt."""

    system_prompt: str | None = None

    @classmethod
    def from_config(cls, generation: GenerationConfig,
                    system_prompt: str | None = None) -> GenerationSettings:
        return cls(**asdict(generation), system_prompt=system_prompt)

    def check(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise EvalError(f"generation: batch_size and max_new_tokens must be >= 1 "
                            f"(got {self.batch_size}, {self.max_new_tokens})")
        if self.do_sample and (self.temperature <= 0 or not 0 < self.top_p <= 1):
            raise EvalError(f"generation: sampling needs temperature > 0 and 0 < top_p <= 1 "
                            f"(got {self.temperature}, {self.top_p})")


def read_eval_examples(path: Path) -> list[dict[str, Any]]:
    """Eval examples (`empo data eval` output): conv_id, emotion, seeker, prompt, reference."""
    rows = read_jsonl(path, EXAMPLE_FIELDS, what="eval examples")
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        prompt = row["prompt"]
        if not (isinstance(prompt, list) and prompt and all(
                isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str) for m in prompt)):
            raise EvalError(f"{path}: example {number} (conv_id {row['conv_id']}): prompt must be "
                            f"a non-empty list of {{role, content}} messages")
        key = str(row["conv_id"])
        if key in seen:
            raise EvalError(f"{path}: conv_id {key} appears more than once")
        seen.add(key)
    return rows


# ----------------------------------------------------------------------------- model loading


def load_generation_tokenizer(base: str, chat_template: str | None = None,
                              add_bos: bool | str = "auto"):
    """The tokenizer every generation backend builds its prompt ids with: `models`' one loader,
    left padding, the configured chat template, a BOS from the template as in training."""
    template = None
    if chat_template:
        try:
            template = Path(chat_template).read_text()
        except OSError as err:
            raise EvalError(f"{chat_template}: cannot read chat template ({err.strerror})") from None
    return load_tokenizer_from(base, template, add_bos, padding_side="left")


def load_generator(base: str, adapter: Path | None = None, dtype: str = "auto",
                   attn_implementation: str | None = None, chat_template: str | None = None,
                   device: str | None = None, add_bos: bool | str = "auto",
                   quantization: str = "none"):
    """(model, tokenizer): the base causal LM + optional peft adapter; tokenizer pads left, its
    template starts with a BOS as in training (`model.add_bos`); `quantization` as in training."""
    import torch


    if dtype not in DTYPES:
        raise EvalError(f"dtype '{dtype}': allowed {', '.join(DTYPES)}")
    if adapter is not None:
        check_adapter(base, adapter)
    tokenizer = load_generation_tokenizer(base, chat_template, add_bos)
    model = load_causal_lm(base, dtype, attn_implementation, quantization)
    if adapter is not None:
        model = load_adapter(model, adapter, checked=True)
    if quantization not in (None, "none"):  # placed by device_map; 4-bit weights cannot move
        return model.eval(), tokenizer
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


# ----------------------------------------------------------------------------- generation


def prompt_ids(tokenizer, messages: Sequence[dict[str, str]], system_prompt: str | None = None
               ) -> list[int]:
    """Chat template + generation prompt, tokenized without added special tokens (as trained)."""
    messages = list(messages)
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _left_pad(batch: Sequence[Sequence[int]], pad_id: int):
    import torch

    length = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, ids in enumerate(batch):
        if ids:
            input_ids[row, length - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, length - len(ids):] = 1
    return input_ids, mask


def generate_batch(model, tokenizer, batch: Sequence[Sequence[int]],
                   settings: GenerationSettings) -> list[str]:
    """Responses for a batch of token-id prompts: new tokens up to the first EOS, decoded."""
    import torch

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    input_ids, mask = _left_pad(batch, pad)
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens,
                              "do_sample": settings.do_sample, "pad_token_id": pad,
                              "eos_token_id": eos}
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                **kwargs)
    return [decode_response(tokenizer, row) for row in output[:, input_ids.shape[1]:].tolist()]


def decode_response(tokenizer, token_ids: Sequence[int]) -> str:
    """A response's text, shared by every backend: the new tokens up to the first EOS, decoded
    without special tokens, stripped."""
    row = list(token_ids)
    eos = tokenizer.eos_token_id
    if eos in row:
        row = row[: row.index(eos)]
    return tokenizer.decode(row, skip_special_tokens=True).strip()


def _read_partial(partial: Path, signature: dict[str, Any], wanted: set[str]) -> list[dict]:
    """Finished rows of an interrupted run with the same signature (a torn last line is dropped)."""
    if not partial.exists():
        return []
    lines = partial.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("partial_of") != signature:
        log.warning("%s was written with other settings; starting over", partial)
        return []
    rows = []
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # interrupted mid-write
        if isinstance(row, dict) and str(row.get("conv_id")) in wanted and "prediction" in row:
            rows.append(row)
    return rows


def generate_predictions(examples: Sequence[dict[str, Any]], out: Path, model, tokenizer,
                         settings: GenerationSettings, signature: dict[str, Any] | None = None,
                         on_batch: Callable[[int, int], None] | None = None,
                         progress: bool = True,
                         generate: Callable[[list[list[int]]], list[str]] | None = None,
                         chunk_size: int | None = None) -> Path:
    """Generate a prediction per example into `out` (JSONL, input order), resumably.

    `signature` (model, adapter, settings) guards the partial file: rows made with another one are
    not reused. `on_batch(done, total)` is called after each batch is flushed. `generate` (prompt
    ids -> texts) replaces the transformers model (another backend), flushing every
    `chunk_size` prompts (default `settings.batch_size`)."""
    from tqdm import tqdm

    settings.check()
    out = Path(out)
    if not out.parent.is_dir():
        raise EvalError(f"{out}: output directory {out.parent} does not exist")
    partial = out.with_name(out.name + ".partial")
    produced_by = {k: v for k, v in asdict(settings).items() if k != "batch_size"}  # no effect
    signature = json.loads(json.dumps({"settings": produced_by, **(signature or {})}, default=str))
    wanted = {str(e["conv_id"]) for e in examples}
    done = {str(r["conv_id"]): r for r in _read_partial(partial, signature, wanted)}
    # rewrite the partial file: header + the kept rows (drops a torn tail before appending)
    atomic_write_jsonl(partial, [{"partial_of": signature}, *done.values()])
    todo = [e for e in examples if str(e["conv_id"]) not in done]
    if done:
        log.info("resuming %s: %d of %d rows already generated", out, len(done), len(examples))
    ids = {str(e["conv_id"]): prompt_ids(tokenizer, e["prompt"], settings.system_prompt)
           for e in todo}
    todo.sort(key=lambda e: len(ids[str(e["conv_id"])]), reverse=True)  # longest first
    with open(partial, "a", encoding="utf-8") as sink, \
            tqdm(total=len(examples), initial=len(done), unit="prompt", file=sys.stderr,
                 disable=not progress, desc="generate") as bar:
        if generate is None:
            def generate(batch_ids: list[list[int]]) -> list[str]:
                return generate_batch(model, tokenizer, batch_ids, settings)
        step = chunk_size or settings.batch_size
        for start in range(0, len(todo), step):
            batch = todo[start:start + step]
            texts = generate([ids[str(e["conv_id"])] for e in batch])
            for example, text in zip(batch, texts):
                row = {field: example[field] for field in EXAMPLE_FIELDS}
                row["prediction"] = text
                row = {field: row[field] for field in PREDICTION_FIELDS}
                done[str(example["conv_id"])] = row
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(len(done), len(examples))
    atomic_write_jsonl(out, (done[str(e["conv_id"])] for e in examples))
    partial.unlink()
    return out


def generate_file(data: Path, out: Path, base: str, adapter: Path | None,
                  settings: GenerationSettings, dtype: str = "auto",
                  attn_implementation: str | None = None, chat_template: str | None = None,
                  seed: int | None = None, progress: bool = True) -> Path:
    """Read eval examples, load the model (+ adapter), generate `out` resumably."""
    settings.check()
    examples = read_eval_examples(data)
    model, tokenizer = load_generator(base, adapter, dtype, attn_implementation, chat_template)
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    signature = {"base": str(base), "adapter": str(adapter) if adapter else None,
                 "chat_template": chat_template}
    return generate_predictions(examples, out, model, tokenizer, settings, signature=signature,
                                progress=progress)
