"""Operations on the local SLURM cluster (issue 15): `empo status` explains a failure with its
exception line, a pending dependant with SLURM's Dependency reason, and names the stage at fault
after `scancel`; cost.csv equals the sums computed from sacct; job logs carry the header and no
carriage returns; `empo logs` prints them. Training and MMLU are finished by hand (seconds)."""
from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path

import pytest

from empo.cli import main
from empo.config import load_config
from empo.launch.manifest import read_manifest
from empo.pipeline import build_graph
from fakes import finish_training_and_mmlu

pytestmark = [pytest.mark.slurm]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def smoke_args(results: Path, *more: str) -> list[str]:
    """The smoke experiment on the local cluster (its profile; results under `results`)."""
    return [str(PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"), f"results_dir={results}",
            f"cluster.profile={PROJECT_ROOT / 'configs' / 'cluster' / 'local.yaml'}",
            "cluster.executor=slurm", *more]


def store(tmp_path, *more):
    """The smoke experiment (mmlu only) with SFT, DPO and MMLU done by hand, except `keep`."""
    args = smoke_args(tmp_path / "results", "eval.metrics=[mmlu]", *more)
    cfg = load_config(args[0], args[1:])
    return args, cfg


def finish(cfg, skip=()):
    finish_training_and_mmlu(build_graph(cfg), skip)


def status_of(cfg, capsys):
    assert main(["status", str(cfg.experiment_dir), "--json"]) == 0
    return {s["key"]: s for s in json.loads(capsys.readouterr().out)}


def settle(cfg, capsys, timeout_s=180):
    deadline = time.time() + timeout_s
    while True:
        status = status_of(cfg, capsys)
        if not [s for s in status.values() if s["state"] in ("running", "pending")]:
            return status
        assert time.time() < deadline, status
        time.sleep(2)


def test_status_explains_failures_costs_from_sacct_and_logs_are_plain(slurm_cluster, tmp_path,
                                                                      capsys):
    args, cfg = store(tmp_path)
    finish(cfg)
    bad = cfg.experiment_dir / "runs" / "sft" / "seed-2" / "metrics.json"
    bad.write_text(json.dumps({"mmlu": "high"}))  # parses, so the eval is done; the table fails
    assert main(["submit", *args]) == 0
    capsys.readouterr()
    status = settle(cfg, capsys)
    failed = status["aggregate"]
    assert failed["state"] == "failed" and failed["slurm_state"] == "FAILED"
    assert "malformed metrics.json" in failed["error"], failed
    assert failed["error"] in failed["reason"] and failed["exit_code"] == "1:0"
    assert failed["elapsed_s"] is not None and failed["nodes"] == slurm_cluster.node
    assert status["share/baseline/seed-2"]["state"] == "done"

    # cost.csv = sacct's elapsed x allocated CPUs/GPUs of the same jobs
    jobs = sorted({e["job_id"] for e in read_manifest(cfg.experiment_dir)["jobs"].values()})
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-o", "JobID,ElapsedRaw,AllocTRES",
                          "-j", ",".join(jobs)], capture_output=True, text=True, timeout=30).stdout
    cpu = gpu = 0.0
    for line in out.splitlines():
        _, elapsed, tres = line.split("|")
        parts = dict(p.split("=") for p in tres.split(",") if "=" in p)
        cpu += int(elapsed) * int(parts.get("cpu", 0)) / 3600
        gpu += int(elapsed) * int(parts.get("gres/gpu", 0)) / 3600
    rows = list(csv.DictReader((cfg.experiment_dir / "cost.csv").open()))
    assert rows[-1]["stage"] == "total"
    assert abs(float(rows[-1]["cpu_hours"]) - cpu) < 1e-5 and abs(float(rows[-1]["gpu_hours"]) - gpu) < 1e-5
    assert main(["status", str(cfg.experiment_dir)]) == 0
    table = capsys.readouterr().out
    assert "GPU-h" in table and "total" in table and "metrics.json" in table

    # the job logs: header, no carriage returns; `empo logs` prints the current one
    entry = read_manifest(cfg.experiment_dir)["jobs"]["aggregate"]
    for log in (entry["stdout"], entry["stderr"]):
        text = open(log).read()
        assert "\r" not in text
        assert "empo job: aggregate" in text and "git commit:" in text and "container image:" in text
    assert main(["logs", str(cfg.experiment_dir), "aggregate", "--err"]) == 0
    assert failed["error"] in capsys.readouterr().out


def test_pending_dependants_show_the_dependency_and_after_scancel_name_the_stage_at_fault(
        slurm_cluster, tmp_path, capsys):
    args, cfg = store(tmp_path, "seeds=[1]", "cluster.slurm_extra={hold: true}")
    finish(cfg, skip={"sft/sft/seed-1", "dpo/sft_dpo/seed-1", "mmlu/sft/seed-1",
                      "mmlu/sft_dpo/seed-1"})
    assert main(["submit", *args]) == 0
    capsys.readouterr()
    jobs = read_manifest(cfg.experiment_dir)["jobs"]
    sft = jobs["sft/sft/seed-1"]["job_id"]
    others = sorted({e["job_id"] for e in jobs.values()} - {sft})
    subprocess.run(["scontrol", "release", ",".join(others)], check=True, timeout=30)
    time.sleep(2)
    status = status_of(cfg, capsys)
    assert status["sft/sft/seed-1"]["state"] == "pending"
    assert "SLURM: JobHeldUser" in status["sft/sft/seed-1"]["reason"]
    assert status["dpo/sft_dpo/seed-1"]["reason"] == "waiting for sft/sft/seed-1; SLURM: Dependency"
    subprocess.run(["scancel", sft], check=True, timeout=30)
    try:
        status = settle(cfg, capsys, timeout_s=60)
    finally:
        main(["cancel", str(cfg.experiment_dir)])
        capsys.readouterr()
    assert status["sft/sft/seed-1"]["state"] == "cancelled"
    for key in ("dpo/sft_dpo/seed-1", "mmlu/sft/seed-1", "aggregate"):
        assert status[key]["blocked_by"] == "sft/sft/seed-1", status[key]
        assert status[key]["reason"] == "dependency sft/sft/seed-1 cancelled", status[key]
