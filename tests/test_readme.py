"""README.md opens with the commands CI runs: install, main job, test."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    quick_start = (ROOT / "README.md").read_text().split("## User guide")[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", quick_start, re.S)]


def test_readme_opens_with_install_main_job_and_test():
    install, main_job, test = readme_commands()
    assert "pip install torch==2.13.0" in install and "pip install -e '.[dev]'" in install
    assert main_job == "empo run configs/experiments/smoke.yaml"
    assert test.splitlines() == ["python -m pytest -q", "python -m pytest -q --all"]  # the tiers


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    install, _, test = readme_commands()
    for step in install.split(" && ")[1:]:  # the venv is created by CI the same way
        assert step.replace("pip install", "pip install -q") in ci or step in ci, step
    assert ci.rstrip().splitlines()[-1] == test.splitlines()[-1]  # the whole suite
    assert "--durations=25" in ci
