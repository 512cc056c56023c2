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


