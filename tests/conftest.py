"""Shared fixtures: offline environment and the tiny assets every model test uses."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fakes, shared by the test packages

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`empo assets tiny` output, built once per test session (or reused from EMPO_TEST_ASSETS)."""
    from empo.assets import ensure_tiny_assets

    where = os.environ.get("EMPO_TEST_ASSETS")
    target = Path(where) if where else tmp_path_factory.mktemp("assets") / "tiny"
    return ensure_tiny_assets(target)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (the design data); tests that read it skip where a clone has none."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent (a user's clone): test needs the shared design data")
    return SHARED
