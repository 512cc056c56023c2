"""Fixtures for the evaluation tests: eval examples, the tiny model, tiny peft adapters."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def eval_examples(tiny_assets: Path) -> list[dict[str, Any]]:
    """Eval examples of the tiny corpus' test split (what `empo data eval` writes)."""
    from empo.data.chat import eligible, eval_example
    from empo.data.ed import load_dialogues

    dialogues = eligible(load_dialogues(str(tiny_assets / "ed"), "test").dialogues)
    return [eval_example(d) for d in dialogues]


@pytest.fixture()
def eval_file(tmp_path: Path, eval_examples) -> Path:
    """12 eval examples as JSONL."""
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in eval_examples[:12]))
    return path


@pytest.fixture(scope="session")
def tiny_lm(tiny_assets: Path):
    """(model, tokenizer) of the tiny Mistral, loaded once."""
    from empo.evaluate.generate import load_generator

    return load_generator(str(tiny_assets / "model"), dtype="float32")


def _make_adapter(base_dir: Path, out: Path, seed: int = 0) -> Path:
    """A LoRA adapter (q_proj, v_proj) with non-zero B matrices, so it changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8,
                                                  target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def adapter(tiny_assets: Path, tmp_path_factory) -> Path:
    """A tiny peft adapter for the tiny model."""
    return _make_adapter(tiny_assets / "model", tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="session")
def foreign_adapter(tiny_assets: Path, tmp_path_factory) -> Path:
    """An adapter trained for another base (hidden size 32 instead of 64)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_assets / "model")
    config.hidden_size, config.intermediate_size = 32, 64
    base = tmp_path_factory.mktemp("other-base") / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    return _make_adapter(base, tmp_path_factory.mktemp("foreign") / "adapter")
