"""`empo run` with submitit's local and debug executors: real job processes, the live table on
stderr, the aggregated table on stdout, re-runs that start only what is missing, failures that
stop their dependants and say where the log is."""
from __future__ import annotations

import json
import re

import pytest
from launchutil import finish_all_but, write_config

from empo.cli import main
from empo.config import load_config
from empo.launch.manifest import read_manifest
from empo.pipeline import build_graph


@pytest.fixture
def evaluated(tmp_path):
    """An experiment whose training and MMLU stages are finished by hand: what is left to run is
    the baseline share for seed 2 and the aggregate."""
    path = write_config(tmp_path, {"eval.metrics": ["mmlu"], "cluster.time": {"aggregate": 3}})
    cfg = load_config(path)
    finish_all_but(build_graph(cfg), keep=set(), value_of=lambda s: 0.01 * s.seed)
    return path, cfg


def started(stderr: str) -> list[str]:
    return re.findall(r"start (\S+) \(job", stderr)


@pytest.mark.parametrize("executor", ["local", "debug"])
def test_run_starts_what_is_missing_and_prints_the_table(evaluated, executor, capsys):
    path, cfg = evaluated
    assert main(["run", str(path), "--executor", executor]) == 0
    out, err = capsys.readouterr()
    assert started(err) == ["share/baseline/seed-2", "aggregate"]
    assert "| baseline | 2 | .510 ± .00 |" in out  # table.md on stdout; shared baseline: SD 0
    assert "| SFT+DPO | 2 |" in out
    assert (cfg.experiment_dir / "table.csv").exists()
    assert json.loads((cfg.experiment_dir / "runs/baseline/seed-2/shared_from.json").read_text())
    manifest = read_manifest(cfg.experiment_dir)
    assert manifest["executor"] == executor and manifest["config_hash"] == cfg.config_hash()
    assert set(manifest["jobs"]) == {"share/baseline/seed-2", "aggregate"}
    assert "env" not in json.dumps(manifest).lower().replace("environment", "")

    assert main(["run", str(path), "--executor", executor]) == 0  # everything is done now
    out, err = capsys.readouterr()
    assert started(err) == [] and "| baseline | 2 |" in out


def test_a_failed_stage_stops_its_dependants_and_names_its_log(evaluated, capsys):
    path, cfg = evaluated
    bad = cfg.experiment_dir / "runs/sft/seed-2/metrics.json"
    bad.write_text(json.dumps({"mmlu": "high"}))  # parses, so the eval is done; the table fails
    assert main(["run", str(path), "--executor", "local"]) == 1
    out, err = capsys.readouterr()
    assert "FAILED aggregate" in err and "malformed metrics.json" in err
    log = re.search(r"log: (\S+_log\.err)", err).group(1)
    assert "malformed metrics.json" in open(log).read()
    assert out == ""
    assert main(["status", str(cfg.experiment_dir), "--json"]) == 0
    status = {s["key"]: s for s in json.loads(capsys.readouterr().out)}
    assert status["share/baseline/seed-2"]["state"] == "done"
    assert status["aggregate"]["state"] == "failed" and status["aggregate"]["log"] == log

    bad.write_text(json.dumps({"mmlu": 0.5}))  # fixed: the re-run does only the aggregate
    assert main(["run", str(path), "--executor", "local"]) == 0
    assert started(capsys.readouterr().err) == ["aggregate"]


def test_a_stage_after_a_failed_one_never_runs(evaluated, capsys):
    path, cfg = evaluated
    blocker = cfg.experiment_dir / "runs/baseline/seed-2"
    blocker.write_text("a file where the share's run directory goes")
    assert main(["run", str(path), "--executor", "local"]) == 1
    err = capsys.readouterr().err
    assert "FAILED share/baseline/seed-2" in err
    assert "aggregate: not-run (dependency share/baseline/seed-2 failed)" in err
    assert not (cfg.experiment_dir / "table.csv").exists()
