"""Unattended on the local SLURM cluster (issue 23): a submission killed after its first sbatch
leaves nothing unseen, a failed rank's exception reaches `empo status`, cancelled array tasks
that never started end, and cost.csv counts every job the experiment ever queued."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from empo.cli import main
from empo.launch.manifest import read_manifest
from slurmutil import ROOT, queued, smoke_args

pytestmark = [pytest.mark.slurm]


# Calls the real sbatch, prints its answer, then kills `empo submit` (its parent): at once
# (before submitit has moved the job's pickle into place), or once the pickle is there (WAIT=1).
STAND_IN = """#!/bin/bash
out=$({real} "$@"); rc=$?
echo "$out"
[ -e {mark} ] && exit $rc
touch {mark}
if [ "{wait}" = 1 ]; then
  id=$(echo "$out" | grep -o '[0-9]*$'); dir=$(dirname "${{@: -1}}")
  ( for i in $(seq 2000); do ls "$dir/${{id}}"*_submitted.pkl >/dev/null 2>&1 && break; sleep 0.005; done
    kill -STOP $PPID; kill -9 $PPID ) >/dev/null 2>&1 &  # not holding sbatch's output pipe
  exit $rc
fi
kill -9 $PPID
exit $rc
"""


def killed_submit(cluster, tmp_path: Path, args: list[str], wait: bool) -> None:
    """`empo submit` with a stand-in sbatch that kills it after its first job is queued."""
    bindir = tmp_path / "standin"
    bindir.mkdir()
    script = bindir / "sbatch"
    script.write_text(STAND_IN.format(real=shutil.which("sbatch"), mark=tmp_path / "killed",
                                      wait=int(wait)))
    script.chmod(0o755)
    env = cluster.env(PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run([sys.executable, "-m", "empo.cli", "submit", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr[-3000:]


@pytest.fixture
def experiment(slurm_cluster, tmp_path):
    """A name unique to this test run; whatever is left of its jobs is cancelled at the end."""
    name = f"u{tmp_path.name[-12:].replace('_', '')}{os.getpid() % 10000}".replace("-", "")
    yield name
    ids = {j.split("_")[0] for j in queued(slurm_cluster, name)}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], env=slurm_cluster.env(), timeout=30)


def status_json(results: Path, capsys) -> dict[str, dict]:
    capsys.readouterr()
    assert main(["status", str(results), "--json"]) == 0
    return {s["key"]: s for s in json.loads(capsys.readouterr().out)}


@pytest.mark.parametrize("wait", [False, True], ids=["killed-at-once", "killed-after-pickle"])
def test_a_submission_killed_after_its_first_sbatch_orphans_nothing(slurm_cluster, tmp_path,
                                                                     capsys, monkeypatch, wait,
                                                                     experiment):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    name = experiment
    args = smoke_args(tmp_path, f"name={name}", "eval.metrics=[mmlu]",
                      "cluster.slurm_extra={begin: now+1hour}")  # every job stays pending
    killed_submit(slurm_cluster, tmp_path, args, wait)
    first = queued(slurm_cluster, name)
    assert first and {j.split("_")[0] for j in first} == {first[0].split("_")[0]}  # the SFT array
    manifest = read_manifest(tmp_path / name)
    assert len(manifest["intents"]) == 1 and not manifest.get("jobs")  # written ahead, no id yet

    status = status_json(tmp_path / name, capsys)  # SLURM knows the job: so does status
    assert {status[f"sft/sft/seed-{s}"]["job_id"] for s in (1, 2)} == set(first)
    assert {status[f"sft/sft/seed-{s}"]["state"] for s in (1, 2)} == {"pending"}

    assert main(["submit", *args]) == 0
    manifest = read_manifest(tmp_path / name)
    live = queued(slurm_cluster, name)
    assert not manifest["intents"]
    assert sorted({e["job_id"] for e in manifest["jobs"].values()}) == live  # one job per stage
    recovered = {e["job_id"] for e in manifest["jobs"].values() if e.get("recovered")}
    if wait:  # the orphan's pickle was in place: adopted (seed 1 at least), not queued twice
        assert recovered and recovered <= set(first)
    else:  # it could never have run: cancelled, kept in the history, and SFT queued again
        assert not recovered and set(first) <= {e["job_id"] for e in manifest["history"]}
        assert not set(first) & set(live)

    assert main(["cancel", str(tmp_path / name)]) == 0
    assert queued(slurm_cluster, name) == []


def test_cancel_reaches_the_jobs_of_a_killed_submission(slurm_cluster, tmp_path, monkeypatch,
                                                        experiment):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    args = smoke_args(tmp_path, f"name={experiment}", "eval.metrics=[mmlu]",
                      "cluster.slurm_extra={begin: now+1hour}")
    killed_submit(slurm_cluster, tmp_path, args, wait=True)
    orphans = queued(slurm_cluster, experiment)
    assert orphans
    assert main(["cancel", str(tmp_path / experiment)]) == 0
    assert queued(slurm_cluster, experiment) == []
    manifest = read_manifest(tmp_path / experiment)
    assert not manifest["intents"] and set(orphans) <= {e["job_id"] for e in manifest["history"]}
