"""bench/gpu_acceptance.sh --cpu-smoke runs end to end, so the prepared GPU run cannot rot."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_acceptance_script_cpu_smoke_writes_its_json(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(ROOT / "bench" / "gpu_acceptance.sh"), "--cpu-smoke"], env=env,
                          capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert report["smoke"] is True
    stages = {(r["stage"], r["variant"]) for r in report["train"]}
    assert {("sft", "baseline (sdpa)"), ("dpo", "precompute_ref_log_probs")} <= stages
    assert all(r["tokens_per_s"] and r["predicted_gib"] > 0 for r in report["train"])
    assert report["generation"]["batched_64_prompts_per_s"] > 0
    assert report["epitome"].get("levels_identical") is True
    assert "tokens/s" in done.stdout and "generation:" in done.stdout
