"""Unattended on the local SLURM cluster (issue 23): a submission killed after its first sbatch
leaves nothing unseen, a failed rank's exception reaches `empo status`, cancelled array tasks
that never started end, and cost.csv counts every job the experiment ever queued."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
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


@pytest.mark.slow
def test_a_failed_two_rank_training_job_shows_the_first_failing_ranks_exception(
        slurm_cluster, tmp_path, capsys, monkeypatch, experiment):
    """Both ranks of an SFT job (fake GPUs: two tasks over gloo) fail loading truncated weights
    after torch's process group is up, so torch prefixes their tracebacks (`[rank0]: ...`)."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    model = tmp_path / "model"
    shutil.copytree(ROOT / "assets/tiny/model", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    args = smoke_args(tmp_path, f"name={experiment}", "seeds=[1]", "eval.metrics=[mmlu]",
                      f"model.name_or_path={model}", "cluster.gpus_per_node=2")
    assert main(["submit", *args, "--no-preflight"]) == 0
    deadline = time.time() + 300
    while (sft := status_json(tmp_path / experiment, capsys)["sft/sft/seed-1"])["state"] in (
            "pending", "running"):
        assert time.time() < deadline, sft
        time.sleep(2)
    logs = sorted(Path(sft["log"]).parent.glob(f"{sft['job_id']}_*_log.err"))
    assert len(logs) == 2 and all("[rank" in log.read_text() for log in logs)  # torch's prefix
    assert sft["state"] == "failed" and sft["slurm_state"] == "FAILED", sft
    assert sft["error"].startswith("[rank 0] ") and "Error" in sft["error"], sft
    assert sft["error"] in sft["reason"]


def test_cancelled_array_tasks_that_never_started_end_and_status_watch_returns(
        slurm_cluster, tmp_path, capsys, monkeypatch, experiment):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    args = smoke_args(tmp_path, f"name={experiment}", "eval.metrics=[mmlu]",
                      "cluster.slurm_extra={hold: true}")  # nothing starts
    assert main(["submit", *args]) == 0
    jobs = read_manifest(tmp_path / experiment)["jobs"]
    sft = jobs["sft/sft/seed-1"]["array_id"]
    assert sft and jobs["sft/sft/seed-2"]["job_id"] == f"{sft}_1"
    subprocess.run(["scancel", sft], check=True, timeout=30, env=slurm_cluster.env())
    acct = ""
    deadline = time.time() + 60  # until accounting holds the range record, e.g. `41_[0-1%2]`
    while f"{sft}_[" not in acct:
        assert time.time() < deadline, acct
        time.sleep(1)
        acct = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", sft],
                              capture_output=True, text=True, timeout=30).stdout
    assert queued(slurm_cluster, f"{experiment}:sft") == []
    status = status_json(tmp_path / experiment, capsys)
    assert {status[f"sft/sft/seed-{s}"]["state"] for s in (1, 2)} == {"cancelled"}, status
    main(["cancel", str(tmp_path / experiment)])  # the dependants, held: cancelled too
    watch = subprocess.run([sys.executable, "-m", "empo.cli", "status", str(tmp_path / experiment),
                            "--watch", "1"], capture_output=True, text=True, timeout=120,
                           env=slurm_cluster.env(), cwd=ROOT)
    assert watch.returncode == 0 and "cancelled" in watch.stdout, watch.stderr[-2000:]


def test_cost_counts_every_job_the_experiment_queued_as_sacct_does(slurm_cluster, tmp_path,
                                                                    capsys, monkeypatch,
                                                                    experiment):
    """Training and MMLU done by hand: the baseline share of seed 2 and the aggregate are the
    jobs. The first submission is killed after queuing the share (it starts, finds no pickle,
    and is cancelled by the resubmission), the second runs both: cost.csv's total is sacct's
    ElapsedRaw × AllocTRES over all three."""
    from empo.config import load_config
    from empo.pipeline import build_graph
    from fakes import finish_training_and_mmlu

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    args = smoke_args(tmp_path, f"name={experiment}", "eval.metrics=[mmlu]")
    finish_training_and_mmlu(build_graph(load_config(args[0], args[1:])))
    killed_submit(slurm_cluster, tmp_path, args, wait=False)
    time.sleep(3)  # the orphan runs a moment: it costs something
    assert main(["submit", *args]) == 0
    deadline = time.time() + 180
    while [s for s in status_json(tmp_path / experiment, capsys).values()
           if s["state"] in ("pending", "running")]:
        assert time.time() < deadline
        time.sleep(2)
    acct = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-o", "JobID,JobName,ElapsedRaw,AllocTRES",
                           "-S", "now-1hour", "-E", "now"], capture_output=True, text=True,
                          timeout=30, env=slurm_cluster.env()).stdout
    cpu = gpu = 0.0
    jobs = set()
    for line in acct.splitlines():
        job_id, name, elapsed, tres = line.split("|")
        if name.startswith(f"{experiment}:"):
            jobs.add(job_id)
            parts = dict(p.split("=", 1) for p in tres.split(",") if "=" in p)
            cpu += int(elapsed) * int(parts.get("cpu", 0)) / 3600
            gpu += int(elapsed) * int(parts.get("gres/gpu", 0)) / 3600
    rows = list(csv.DictReader((tmp_path / experiment / "cost.csv").open()))
    assert len(jobs) == 3 and {r["job_id"] for r in rows[:-1]} == jobs  # the orphan is a row
    share = [(r["state"], r["kept"]) for r in rows if r["stage"] == "share/baseline/seed-2"]
    assert sorted(share) == [("CANCELLED", "no"), ("COMPLETED", "yes")], rows
    assert cpu > 0 and abs(float(rows[-1]["cpu_hours"]) - cpu) < 1e-5
    assert abs(float(rows[-1]["gpu_hours"]) - gpu) < 1e-5


def test_a_hand_queued_wrapper_job_is_named_recorded_and_shown_while_it_pends(
        slurm_cluster, tmp_path, capsys, monkeypatch, experiment):
    """`empo job sbatch` (the wrappers' hand-queued path): named and in the manifest while it
    pends, before any experiment.yaml existed; once it runs, its log has the job header once and
    OMP_NUM_THREADS = the task's CPUs."""
    from empo.config import load_config
    from empo.pipeline import build_graph
    from fakes import finish_training_and_mmlu

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    config = str(ROOT / "configs/experiments/smoke.yaml")  # the wrappers' own resources
    overrides = [f"results_dir={tmp_path}", f"name={experiment}", "eval.metrics=[mmlu]"]
    local = ["--gpus-per-node=0", "--ntasks-per-node=1", "--cpus-per-task=1", "--mem=1G"]
    env = slurm_cluster.env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    def queue(*words: str) -> str:
        run = subprocess.run([sys.executable, "-m", "empo.cli", "job", "sbatch", *words],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        return run.stdout.strip()

    held = queue("sft", config, *overrides, "seed=1", "--", *local, "--hold")
    assert queued(slurm_cluster, experiment) == [held]
    status = status_json(tmp_path / experiment, capsys)["sft/sft/seed-1"]
    assert (status["state"], status["job_id"]) == ("pending", held)
    shown = subprocess.run(["squeue", "-h", "-j", held, "-o", "%j"], capture_output=True,
                           text=True, env=env, timeout=30).stdout.strip()
    assert shown == f"{experiment}:sft:sft:seed-1"
    subprocess.run(["scancel", held], env=env, timeout=30, check=True)

    finish_training_and_mmlu(build_graph(load_config(config, overrides)))  # its stages skip
    done = queue("eval", config, *overrides, "variant=sft", "seed=1", "--", *local)
    deadline = time.time() + 400  # the shared cluster may be busy
    while queued(slurm_cluster, experiment):
        assert time.time() < deadline
        time.sleep(1)
    log = Path(read_manifest(tmp_path / experiment)["jobs"]["mmlu/sft/seed-1"]["stdout"])
    assert log.name == f"{experiment}:eval:sft:seed-1-{done}.out"
    text = log.read_text()
    assert text.count("empo job: mmlu/sft/seed-1") == 1, text
    assert "threads: OMP_NUM_THREADS=1 (task CPUs: 1)" in text, text


def test_a_time_limit_shorter_than_the_signal_lead_is_refused_before_anything_is_queued(
        slurm_cluster, tmp_path, capsys, monkeypatch, experiment):
    """A 1-minute SFT limit with submitit's 90 s USR2 lead would requeue in a loop and end
    FAILED: preflight refuses it, nothing is queued and no manifest is written."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    args = smoke_args(tmp_path, f"name={experiment}", "cluster.time.sft=1")
    assert main(["submit", *args]) == 2
    err = capsys.readouterr().err
    assert "cluster.time.sft: 1 min is shorter than the requeue signal's lead (90 s)" in err, err
    assert queued(slurm_cluster, experiment) == []
    assert not (tmp_path / experiment / "manifest.json").exists()
    assert main(["submit", *smoke_args(tmp_path, f"name={experiment}", "cluster.time.sft=1",
                                        "cluster.signal_lead_s=30", "cluster.slurm_extra={hold: true}")]) == 0
    sft = read_manifest(tmp_path / experiment)["jobs"]["sft/sft/seed-1"]
    script = Path(sft["folder"], f"{sft['array_id']}_submission.sh").read_text()
    assert "#SBATCH --signal=USR2@30" in script  # the lead reaches sbatch


def test_status_is_quick_and_says_so_in_one_line_when_the_controller_does_not_answer(
        slurm_cluster, tmp_path, monkeypatch, experiment):
    """A stand-in squeue that hangs, as squeue does with slurmctld down: status takes one short
    timeout (not MessageTimeout per query), says it in one line, and reads sacct for the rest."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    args = smoke_args(tmp_path, f"name={experiment}", "seeds=[1]", "eval.metrics=[mmlu]",
                      "cluster.slurm_extra={hold: true}")
    assert main(["submit", *args]) == 0
    bindir = tmp_path / "dead"
    bindir.mkdir()
    (bindir / "squeue").write_text("#!/bin/bash\nexec sleep 120\n")
    (bindir / "squeue").chmod(0o755)
    env = slurm_cluster.env(PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "empo.cli", "status", str(tmp_path / experiment),
                          "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    assert run.returncode == 0, run.stderr[-2000:]
    said = [line for line in run.stderr.splitlines() if "not answering" in line]
    assert len(said) == 1 and "slurmctld" in said[0], run.stderr
    assert took < 25, took  # one 8 s timeout (plus start-up on this 2-core machine)
    states = {s["key"]: s["state"] for s in json.loads(run.stdout)}
    assert states["sft/sft/seed-1"] == "pending"  # from sacct
