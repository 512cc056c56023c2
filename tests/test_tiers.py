"""The two tiers of tests/conftest.py: the fast default leaves out slow, slurm and container tests;
--all, an explicit -m or a named test id brings them back; under xdist (--dist loadgroup) the
tests of tests/cluster/ run on one worker, one at a time, the container ones last."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

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


@pytest.mark.container
def test_in_the_image():
    pass


@pytest.mark.parametrize("n", range(4))
def test_one_at_a_time(n):
    pass
'''
INI = "[pytest]\nmarkers =\n    slow: s\n    slurm: s\n    container: s\n"


@pytest.fixture
def sample(pytester: pytest.Pytester) -> pytest.Pytester:
    """A sample suite under the project's tests/conftest.py (its own rootdir and ini)."""
    pytester.makefile(".py", **{f"tests/{name}": (TESTS / f"{name}.py").read_text()
                                for name in ("conftest", "sessionutil")})
    pytester.makefile(".py", **{"tests/test_sample": SAMPLE, "tests/cluster/test_serial": SERIAL})
    pytester.makeini(INI)
    return pytester


def collected(sample: pytest.Pytester, *args: str,
              where: str = "tests/test_sample.py") -> list[str]:
    result = sample.runpytest_inprocess("--collect-only", "-q", where, *args)
    assert result.ret in (0, 5), result.stdout.str()
    return re.findall(r"test_sample\.py::(\w+)", result.stdout.str())


def test_the_default_is_the_fast_tier_and_says_what_it_left_out(sample):
    result = sample.runpytest_inprocess("-v")
    result.assert_outcomes(passed=5, deselected=4)  # test_unit and the 4 unmarked cluster ones
    assert "test_sample.py::test_unit PASSED" in result.stdout.str()
    result.stdout.fnmatch_lines(["fast tier: 4 tests marked slow/slurm/container deselected*"])


def test_an_explicit_marker_expression_or_test_id_replaces_the_tier(sample):
    assert collected(sample, "-m", "slurm or container") == ["test_cluster", "test_image"]
    assert collected(sample, where="tests/test_sample.py::test_graph") == ["test_graph"]


@pytest.mark.slow  # tier: starts pytest with two xdist workers (20 s on the loaded box)
def test_all_on_two_xdist_workers_runs_the_cluster_directory_on_one_a_test_at_a_time(sample):
    pytest.importorskip("xdist")
    result = sample.runpytest_subprocess("--all", "-n", "2", "--dist", "loadgroup", "-v")
    result.assert_outcomes(passed=9)
    ran = re.findall(r"\[(gw\d)\] .*?PASSED tests/cluster/test_serial\.py::(\w+)",
                     result.stdout.str())
    assert len(ran) == 5 and len({worker for worker, _ in ran}) == 1, ran  # one worker, all five
    assert ran[-1][1] == "test_in_the_image", ran  # container tests last: the images build first
