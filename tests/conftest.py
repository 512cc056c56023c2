"""Shared fixtures (offline environment, the tiny assets every model test uses) and the two tiers.

`python -m pytest -q` is the fast tier: tests marked slow, slurm or container are deselected.
`python -m pytest -q --all` is the whole suite (what .ci/run runs); an explicit `-m EXPR` or a
test named by its id (`path::name`) also bypasses the default deselection. Under pytest-xdist
(`-n 2 --dist loadgroup`) the tests of tests/cluster/ (the SLURM cluster and container runtime,
not safe in parallel) run on one worker, one at a time; the others are spread test by test."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fakes, shared by the test packages
from sessionutil import shared_temp  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
HEAVY = ("slow", "slurm", "container")  # the markers left out of the fast tier
_LEFT_OUT = pytest.StashKey[int]()       # how many tests the fast tier deselected
SERIAL_DIRS = ("tests/cluster/",)        # one xdist work unit each: run one test at a time


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--all", action="store_true", dest="whole_suite",
                     help="the whole suite: also the tests marked " + ", ".join(HEAVY)
                          + " (default: the fast tier without them)")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """--dist loadgroup, plus one group per SERIAL_DIRS directory (xdist's own `xdist_group`
    marks rename node ids, which pytest 9 no longer allows, so the group is the directory)."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class SerialDirsScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return next((d for d in SERIAL_DIRS if nodeid.startswith(d)), None) \
                or super()._split_scope(nodeid)

    return SerialDirsScheduling(config, log)


def _xdist_order(item: pytest.Item) -> int:
    """Under xdist, long first so no long test is left for the end: the readers of the session's
    smoke run (the longest chain, started while the serial tests/cluster/ unit runs on the other
    worker), then the other slow tests; container tests last (the images .ci/run builds in the
    background get the most time)."""
    if "smoke_run" in getattr(item, "fixturenames", ()):
        return 0
    if item.get_closest_marker("container"):
        return 3
    return 1 if item.get_closest_marker("slow") else 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker sorts alike: the same collection
        items.sort(key=_xdist_order)
    named = any("::" in arg for arg in config.args)
    if config.getoption("whole_suite") or config.getoption("markexpr") or named:
        return
    heavy = [i for i in items if any(i.get_closest_marker(m) for m in HEAVY)]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [i for i in items if not any(i.get_closest_marker(m) for m in HEAVY)]
        config.stash[_LEFT_OUT] = len(heavy)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    left_out = config.stash.get(_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_line(f"fast tier: {left_out} tests marked {'/'.join(HEAVY)} "
                                    "deselected (the whole suite: python -m pytest -q --all)")


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`empo assets tiny` output, built once per test session (or reused from EMPO_TEST_ASSETS).

    Under pytest-xdist the workers share one build in the run's common temp dir (the first builds
    it under ensure_tiny_assets' lock, the others wait and read it)."""
    from empo.assets import ensure_tiny_assets

    where = os.environ.get("EMPO_TEST_ASSETS")
    if where:
        return ensure_tiny_assets(Path(where))
    return ensure_tiny_assets(shared_temp(tmp_path_factory) / "tiny-assets")


@pytest.fixture(scope="session")
def tiny() -> Path:
    """The smoke config's own tiny assets (assets/tiny in the checkout, what
    configs/experiments/smoke.yaml names): built once per checkout, then reused."""
    from empo.assets import ensure_tiny_assets

    return ensure_tiny_assets(PROJECT_ROOT / "assets" / "tiny")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (the design data); tests that read it skip where a clone has none."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent (a user's clone): test needs the shared design data")
    return SHARED
