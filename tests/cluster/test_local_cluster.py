"""scripts/slurm-cluster and scripts/container-image: the real cluster and image the cluster tests use.

What the launcher relies on: `afterok` dependencies and arrays run in order, a failed stage's
dependants are cancelled (DependencyNeverSatisfied), SLURM accounting (`sacct`, which submitit
polls) records every job, stop leaves no daemon running; and the container image runs the
project's own Python under every runtime that works here.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def sbatch(cluster, *args: str) -> str:
    run = subprocess.run(["sbatch", "--parsable", "--mem=100M", "--time=5", *args],
                         env=cluster.env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip().split(";")[0]


def wait_gone(cluster, *job_ids: str, timeout: float = 120) -> None:
    """Until squeue no longer lists the jobs as pending/running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-t", "PD,R,CG", "-j", ",".join(job_ids), "-o", "%i"],
                             env=cluster.env(), capture_output=True, text=True, timeout=30)
        if not out.stdout.strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"jobs {job_ids} still queued after {timeout} s")


def accounting(cluster, *job_ids: str, expect: int, timeout: float = 60) -> dict[str, tuple[str, str]]:
    """sacct: job id (array tasks as ID_N) -> (State, ExitCode), once `expect` jobs have final
    records (slurmctld sends them to slurmdbd asynchronously: a second or so after squeue)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", "JobID,State,ExitCode"],
                             env=cluster.env(), capture_output=True, text=True, timeout=30, check=True)
        rows = (line.split("|") for line in out.stdout.splitlines() if line)
        states = {job: (state.split()[0], code) for job, state, code in rows}
        final = [s for s, _ in states.values() if s not in ("PENDING", "RUNNING", "COMPLETING")]
        if len(final) >= expect or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


@pytest.mark.slurm
def test_cluster_has_the_shape_tests_expect(slurm_cluster):
    assert slurm_cluster.partitions[0] == "debug" and "batch" in slurm_cluster.partitions
    conf = slurm_cluster.conf.read_text()
    for line in ("JobRequeue=1", "DependencyParameters=kill_invalid_depend", "PreemptType=preempt/none",
                 "MinJobAge=300", "AccountingStorageType=accounting_storage/slurmdbd"):
        assert line in conf


@pytest.mark.slurm
def test_afterok_chain_and_array_run_in_order_and_are_accounted(slurm_cluster, tmp_path):
    log = tmp_path / "order.log"
    first = sbatch(slurm_cluster, f"--output={tmp_path}/%j.out", "--wrap", f"echo first >> {log}")
    array = sbatch(slurm_cluster, "--array=1-3", f"--dependency=afterok:{first}",
                   f"--output={tmp_path}/%A_%a.out", "--wrap", f"echo seed-$SLURM_ARRAY_TASK_ID >> {log}")
    last = sbatch(slurm_cluster, f"--dependency=afterok:{array}", f"--output={tmp_path}/%j.out",
                  "--wrap", f"echo aggregate >> {log}")
    wait_gone(slurm_cluster, first, array, last)
    lines = log.read_text().split()
    assert lines[0] == "first" and lines[-1] == "aggregate"
    assert sorted(lines[1:-1]) == ["seed-1", "seed-2", "seed-3"]
    states = accounting(slurm_cluster, first, array, last, expect=5)
    assert states == {first: ("COMPLETED", "0:0"), f"{array}_1": ("COMPLETED", "0:0"),
                      f"{array}_2": ("COMPLETED", "0:0"), f"{array}_3": ("COMPLETED", "0:0"),
                      last: ("COMPLETED", "0:0")}


@pytest.mark.slurm
def test_failed_job_cancels_its_dependants(slurm_cluster, tmp_path):
    failing = sbatch(slurm_cluster, f"--output={tmp_path}/%j.out", "--wrap", "exit 3")
    child = sbatch(slurm_cluster, f"--dependency=afterok:{failing}", "--wrap", "true")
    grandchild = sbatch(slurm_cluster, f"--dependency=afterok:{child}", "--wrap", "true")
    wait_gone(slurm_cluster, failing, child, grandchild)
    states = accounting(slurm_cluster, failing, child, grandchild, expect=3)
    assert states[failing] == ("FAILED", "3:0")
    assert states[child][0] == states[grandchild][0] == "CANCELLED"
    reason = subprocess.run(["squeue", "-h", "-t", "all", "-j", child, "-o", "%r"], env=slurm_cluster.env(),
                            capture_output=True, text=True, timeout=30).stdout.strip()
    assert reason == "DependencyNeverSatisfied"


@pytest.mark.slurm
def test_second_cluster_starts_and_stops_cleanly(slurm_cluster, tmp_path):
    """A private cluster beside the session's one; stop leaves none of its daemons alive."""
    script = str(SCRIPTS / "slurm-cluster")
    start = subprocess.run([script, "start", str(tmp_path)], capture_output=True, text=True, timeout=300)
    try:
        assert start.returncode == 0, start.stderr
        assert start.stdout.strip() == f"export SLURM_CONF='{tmp_path}/etc/slurm.conf'"
        pids = [int((tmp_path / "run" / f"{d}.pid").read_text()) for d in
                ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")]
        env = {**slurm_cluster.env(), "SLURM_CONF": f"{tmp_path}/etc/slurm.conf"}
        run = subprocess.run(["srun", "--mem=100M", "hostname"], env=env, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
    finally:
        stop = subprocess.run([script, "stop", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    for pid in pids:  # gone, or a zombie waiting for PID 1 to reap it
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "State:\tZ" in status.read_text()
    status = subprocess.run([script, "status", str(tmp_path)], capture_output=True, text=True)
    assert status.returncode == 1 and status.stdout.count("stopped") == 5
    # the session's cluster is untouched
    assert subprocess.run(["sinfo", "-h"], env=slurm_cluster.env(), capture_output=True,
                          timeout=30).returncode == 0


@pytest.mark.container
def test_image_runs_the_projects_python_under_each_working_runtime(container_image):
    probe = "import sys, os, empo; print(sys.version.split()[0], os.path.exists('/etc/empo-test-image'))"
    for runtime in container_image.runtimes:
        run = subprocess.run(container_image.command([container_image.python, "-c", probe], runtime=runtime),
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{runtime}: {run.stderr}"
        assert run.stdout.split() == [sys.version.split()[0], "True"], runtime
