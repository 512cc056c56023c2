"""Fixtures for the training tests: the smoke config on the tiny assets, one shared SFT run."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # trainutil, shared by the test modules
from trainutil import SMOKE, smoke_overrides  # noqa: E402

from empo.config import ExperimentConfig, load_config


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_process():
    """One intra-op thread: on a shared 2-core machine, 2 spinning OpenMP threads per process made
    the tiny-model steps up to 40× slower (bench/README.md); subprocesses inherit the env var."""
    import torch

    previous = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous[0])
    if previous[1] is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = previous[1]


@pytest.fixture(scope="session")
def make_cfg(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., ExperimentConfig]:
    """make_cfg(*overrides) -> the smoke config on the tiny assets (results in a temp dir)."""
    results = tmp_path_factory.mktemp("results")

    def make(*overrides: str) -> ExperimentConfig:
        return load_config(SMOKE, [*smoke_overrides(tiny_assets, results), *overrides])

    return make


@pytest.fixture(scope="session")
def sft_run(make_cfg, tmp_path_factory) -> Path:
    """One finished SFT stage (seed 1) on the tiny model: its run directory."""
    from empo.train.sft import train_sft

    out = tmp_path_factory.mktemp("sft") / "seed-1"
    train_sft(make_cfg(), 1, out)
    return out
