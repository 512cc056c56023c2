"""Hand-made outputs for tests that skip a stage: the smallest files that pass the run store's
output checks (a stage is done when its marker exists *and* its outputs parse)."""
from __future__ import annotations

import json
from pathlib import Path

from empo.results.store import mark_done

EMPTY_SAFETENSORS = (2).to_bytes(8, "little") + b"{}"  # header length, then an empty header


def fake_adapter(run_directory: Path) -> Path:
    """`adapter/` with a JSON config and an empty but well-formed safetensors file."""
    adapter = Path(run_directory) / "adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (adapter / "adapter_model.safetensors").write_bytes(EMPTY_SAFETENSORS)
    return adapter


def fake_training(run_directory: Path) -> None:
    """A finished SFT/DPO stage: the adapter and DONE."""
    fake_adapter(run_directory)
    mark_done(run_directory)
