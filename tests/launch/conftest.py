"""Helpers for the launcher tests: small experiment configs in a temp project, hand-made runs."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from empo.config import ExperimentConfig, load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))  # launchutil, shared by the test modules
from launchutil import write_config  # noqa: E402


@pytest.fixture
def make_cfg(tmp_path: Path):
    """make_cfg(**dotted overrides) -> a validated config whose results live in tmp_path."""
    def make(**overrides: Any) -> ExperimentConfig:
        flat = {k.replace("__", "."): v for k, v in overrides.items()}
        return load_config(write_config(tmp_path, flat))
    return make




@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory):
    """`empo run configs/experiments/smoke.yaml` from scratch, once per session, as a user runs
    it (a subprocess): (results dir, completed process, seconds). Shared by the end-to-end test
    and the reproducibility check, so CI pays for one full reference run."""
    import subprocess
    import time

    results = tmp_path_factory.mktemp("smoke-reference")
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "empo.cli", "run",
                           str(Path(__file__).resolve().parents[2] / "configs/experiments/smoke.yaml"),
                           f"results_dir={results}"], capture_output=True, text=True, timeout=1800)
    return results, done, time.time() - start
