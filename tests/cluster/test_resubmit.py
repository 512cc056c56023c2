"""Safe resubmission on a real SLURM cluster: a second `empo submit` while the first one's jobs
are still queued submits nothing twice, new stages wait on the live jobs, and `empo cancel`
reaches every job the experiment ever queued."""
from __future__ import annotations

import json
import subprocess

import pytest

from empo.cli import main
from slurmutil import queued, smoke_args

pytestmark = [pytest.mark.slurm]


def test_resubmitting_while_jobs_are_queued_duplicates_nothing(slurm_cluster, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    # every job waits an hour to start: all stay PENDING while we resubmit
    args = smoke_args(tmp_path, "name=resub", "eval.metrics=[mmlu]",
                      "cluster.slurm_extra={begin: now+1hour}")
    assert main(["submit", *args]) == 0
    first = queued(slurm_cluster, "resub")
    assert first
    capsys.readouterr()

    assert main(["submit", *args]) == 0  # the same experiment again: nothing new
    assert queued(slurm_cluster, "resub") == first
    assert "already queued or running" in capsys.readouterr().out

    # a new metric: its jobs are new, and wait on the live training jobs of the first submission
    assert main(["submit", *args[:-2], "eval.metrics=[mmlu, bertscore]", args[-1]]) == 0
    second = queued(slurm_cluster, "resub")
    manifest = json.loads((tmp_path / "resub" / "manifest.json").read_text())
    replaced = {e["job_id"] for e in manifest["history"]}
    assert set(second) - set(first)  # new jobs for the new stages
    assert set(first) - set(second) == replaced  # only jobs of stages whose config changed left
    assert set(second) == {e["job_id"] for e in manifest["jobs"].values()}  # one job per stage
    sft = manifest["jobs"]["sft/sft/seed-1"]["job_id"].split("_")[0]
    eval_job = manifest["jobs"]["bertscore/sft/seed-1"]["job_id"]
    shown = subprocess.run(["scontrol", "show", "job", eval_job], capture_output=True, text=True,
                           env=slurm_cluster.env(), timeout=30).stdout
    assert sft in shown.split("Dependency=", 1)[1].split()[0]
    # the aggregate now summarises more: its queued job (of the old config) was replaced, and
    # the old entry is kept in the manifest's history
    old_aggregate = [e for e in manifest["history"] if e["stage"] == "aggregate"]
    assert old_aggregate and old_aggregate[0]["job_id"] not in second
    assert manifest["jobs"]["aggregate"]["job_id"] in second

    assert main(["cancel", str(tmp_path / "resub")]) == 0
    assert queued(slurm_cluster, "resub") == []
