"""Hand-made outputs for tests that skip a stage: the smallest files that pass the run store's
output checks (a stage is done when its marker exists *and* its outputs parse)."""
from __future__ import annotations

import json
from pathlib import Path

from empo.store import mark_done

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


def finish_training_and_mmlu(stages, skip: tuple[str, ...] | set[str] = ()) -> None:
    """SFT, DPO and MMLU stages of a graph finished by hand (mmlu = 0.1 × seed), but `skip`."""
    for stage in stages:
        if stage.key in skip or stage.kind not in ("sft", "dpo", "mmlu"):
            continue
        stage.directory.mkdir(parents=True, exist_ok=True)
        if stage.kind == "mmlu":
            (stage.directory / "metrics.json").write_text(json.dumps({"mmlu": 0.1 * stage.seed}))
            mark_done(stage.directory, "mmlu")
        else:
            fake_training(stage.directory)
