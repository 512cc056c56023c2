"""The two tiers of tests/conftest.py: the fast default leaves out slow, slurm and container tests;
--all, an explicit -m or a named test id brings them back; under xdist (--dist loadgroup) the
tests of tests/cluster/ run on one worker, one at a time."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SAMPLE = '''
import pytest


def test_unit():
    pass


@pytest.mark.slow
def test_graph():
    pass


@pytest.mark.slurm
def test_cluster():
    pass


@pytest.mark.container
def test_image():
    pass
'''
SERIAL = '''
import pytest


@pytest.mark.parametrize("n", range(4))
def test_one_at_a_time(n):
    pass
'''
INI = "[pytest]\nmarkers =\n    slow: s\n    slurm: s\n    container: s\n"


def pytest_in(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """pytest on a sample suite under the project's tests/conftest.py (own rootdir and ini)."""
    (tmp_path / "tests" / "cluster").mkdir(parents=True, exist_ok=True)
    for name in ("conftest.py", "sessionutil.py"):
        (tmp_path / "tests" / name).write_text((TESTS / name).read_text())
    (tmp_path / "tests" / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "tests" / "cluster" / "test_serial.py").write_text(SERIAL)
    (tmp_path / "pytest.ini").write_text(INI)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


def collected(tmp_path: Path, *args: str, where: str = "tests/test_sample.py") -> list[str]:
    done = pytest_in(tmp_path, "--collect-only", "-q", where, *args)
    assert done.returncode in (0, 5), done.stdout + done.stderr
    return re.findall(r"test_sample\.py::(\w+)", done.stdout)


def test_the_default_is_the_fast_tier_and_all_is_the_whole_suite(tmp_path):
    assert collected(tmp_path) == ["test_unit"]
    assert collected(tmp_path, "--all") == ["test_unit", "test_graph", "test_cluster", "test_image"]


def test_an_explicit_marker_expression_or_test_id_replaces_the_tier(tmp_path):
    assert collected(tmp_path, "-m", "slurm or container") == ["test_cluster", "test_image"]
    assert collected(tmp_path, where="tests/test_sample.py::test_graph") == ["test_graph"]


def test_the_fast_tier_says_what_it_left_out(tmp_path):
    done = pytest_in(tmp_path, "-q", "tests/test_sample.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 3 deselected" in done.stdout
    assert "fast tier: 3 tests marked slow/slurm/container deselected" in done.stdout


def test_the_cluster_directory_runs_on_one_xdist_worker_one_test_at_a_time(tmp_path):
    pytest.importorskip("xdist")
    done = pytest_in(tmp_path, "-n", "2", "--dist", "loadgroup", "-v")
    assert done.returncode == 0, done.stdout + done.stderr
    workers = re.findall(r"\[(gw\d)\] .*?PASSED tests/cluster/test_serial\.py::", done.stdout)
    assert len(workers) == 4 and len(set(workers)) == 1, done.stdout  # one worker ran all four
