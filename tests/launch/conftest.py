"""Helpers for the launcher tests: small experiment configs in a temp project, hand-made runs."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from empo.config import ExperimentConfig, load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))  # launchutil, shared by the test modules
from launchutil import write_config  # noqa: E402
from sessionutil import shared_temp  # noqa: E402  (tests/, on the path by tests/conftest.py)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
    and the reproducibility check, so CI pays for one full reference run; under pytest-xdist the
    workers share it too (the first runs it under a lock and records it; the others read that)."""
    import json
    import subprocess
    import time

    from empo.store import file_lock

    base = shared_temp(tmp_path_factory)
    results, record = base / "smoke-reference", base / "smoke-reference.json"
    argv = [sys.executable, "-m", "empo.cli", "run",
            str(PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"), f"results_dir={results}"]
    with file_lock(base / "smoke-reference.lock"):
        if not record.exists():
            results.mkdir()
            start = time.time()
            done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
            record.write_text(json.dumps({"returncode": done.returncode, "stdout": done.stdout,
                                          "stderr": done.stderr, "seconds": time.time() - start}))
    ran = json.loads(record.read_text())
    done = subprocess.CompletedProcess(argv, ran["returncode"], ran["stdout"], ran["stderr"])
    return results, done, ran["seconds"]
