"""One stage never runs twice, finished results are never lost, and a run is reproducible:
the smoke experiment under a second `empo run` at once, a SIGKILLed driver followed by an
immediate rerun, a corrupted metrics.json, and an `empo cancel` of a driver that ignores SIGINT
(started with `&` from a script). Real processes, real submitit local jobs, real stages."""
from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launchutil import PROJECT_ROOT

from empo.store import is_locked

SMOKE = PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"
EMPO = [sys.executable, "-m", "empo.cli"]
# SFT that is still training when the test interrupts it, however fast the machine
LONG_SFT = ("sft.num_train_epochs=200",)


def start(results: Path, *extra: str, ignore_sigint: bool = False) -> subprocess.Popen:
    """`empo run smoke` in the background, as a user's shell would start it."""
    def child() -> None:
        if ignore_sigint:  # what `cmd &` in a non-interactive script does
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen([*EMPO, "run", str(SMOKE), f"results_dir={results}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=PROJECT_ROOT, start_new_session=True, preexec_fn=child)


def wait_for_jobs(exp: Path, prefix: str, timeout: float = 600) -> dict:
    """The manifest once a job of a stage starting with `prefix` is recorded there."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            manifest = json.loads((exp / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {}
        if any(key.startswith(prefix) for key in manifest.get("jobs", {})):
            return manifest
        time.sleep(0.3)
    raise AssertionError(f"no {prefix} job started in {timeout} s")


def stage_starts(exp: Path) -> collections.Counter:
    """How often each stage function was entered, from every job log of the experiment."""
    counts: collections.Counter = collections.Counter()
    for log in (exp / "jobs").glob("*/*_log.err"):
        counts.update(re.findall(r"stage (\S+): start \(", log.read_text(errors="replace")))
    return counts


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_concurrent_and_killed_runs_do_each_stage_once_and_runs_are_reproducible(tmp_path,
                                                                                 smoke_run):
    exp = tmp_path / "a" / "smoke"
    first = start(tmp_path / "a")
    wait_for_jobs(exp, "sft/")
    # a second driver on the same experiment: refused at once, in one line, nothing started
    second = subprocess.run([*EMPO, "run", str(SMOKE), f"results_dir={tmp_path / 'a'}"],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert second.returncode == 2, second.stderr
    assert "already running" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    # the driver dies (SIGKILL): its jobs keep going; an immediate rerun waits for them
    time.sleep(2)
    first.kill()
    first.wait(timeout=60)
    rerun = subprocess.run([*EMPO, "run", str(SMOKE), f"results_dir={tmp_path / 'a'}"],
                           capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=1800)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "started by an earlier empo run" in rerun.stderr or "of an earlier run" in rerun.stderr
    starts = stage_starts(exp)
    assert starts and max(starts.values()) == 1, starts
    assert {"sft/sft/seed-1", "dpo/sft_dpo/seed-2", "aggregate"} <= set(starts)

    # the same as a plain run from scratch elsewhere, byte for byte (bert-score included)
    reference, plain, _ = smoke_run
    assert plain.returncode == 0, plain.stderr[-3000:]
    table = (exp / "table.csv").read_bytes()
    assert (reference / "smoke" / "table.csv").read_bytes() == table

    # a corrupted metrics.json is not a finished result: that evaluation is redone, the old
    # file kept aside, and the table comes out the same
    bad = exp / "runs" / "sft" / "seed-1" / "metrics.json"
    bad.write_text('{"mmlu": 0.5, "diff_er"')
    again = subprocess.run([*EMPO, "run", str(SMOKE), f"results_dir={tmp_path / 'a'}"],
                           capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=1800)
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.findall(r"start (\S+) \(job", again.stderr) == ["eval/sft/seed-1", "aggregate"]
    assert (exp / "runs/sft/seed-1/metrics.json.invalid-1").read_text() == '{"mmlu": 0.5, "diff_er"'
    assert (exp / "table.csv").read_bytes() == table


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cancel_stops_a_driver_that_ignores_sigint_and_all_its_jobs(tmp_path):
    exp = tmp_path / "smoke"
    driver = start(tmp_path, *LONG_SFT, ignore_sigint=True)
    manifest = wait_for_jobs(exp, "sft/")
    time.sleep(2)
    pids = {int(e["job_id"]) for e in manifest["jobs"].values()}
    cancel = subprocess.run([*EMPO, "cancel", str(exp)], capture_output=True, text=True,
                            cwd=PROJECT_ROOT, timeout=300)
    assert cancel.returncode == 0, cancel.stderr
    assert "cancelled" in cancel.stdout
    driver.wait(timeout=60)  # the driver was stopped too: it starts nothing more
    assert not [pid for pid in pids if alive(pid)]
    tasks = subprocess.run(["pgrep", "-f", str(exp / "jobs")], capture_output=True, text=True)
    assert tasks.stdout.strip() == ""
    time.sleep(3)
    assert not (exp / "runs/sft/seed-1/DONE").exists()
    status = subprocess.run([*EMPO, "status", str(exp), "--json"], capture_output=True, text=True,
                            cwd=PROJECT_ROOT, timeout=120)
    states = {s["key"]: s["state"] for s in json.loads(status.stdout)}
    assert states["sft/sft/seed-1"] in ("cancelled", "failed") and "running" not in states.values()
    assert not [p for p in exp.rglob("*") if p.name.endswith(".tmp")]
    # a job killed with SIGKILL cannot remove its lock file; nobody holds it, the next run takes it
    for lock in exp.rglob(".*.lock"):
        assert not is_locked(lock.parent, lock.name[1:-len(".lock")])
    assert os.path.exists(exp / "experiment.yaml")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ctrl_c_stops_the_run_in_one_line_and_leaves_no_partial_files(tmp_path):
    """Ctrl-C at the terminal reaches the whole foreground group (driver, job controllers,
    tasks): the user sees `empo: interrupted`, no controller traceback; the jobs are recorded as
    cancelled and nothing half-written or locked is left."""
    exp = tmp_path / "smoke"
    driver = start(tmp_path, *LONG_SFT)
    wait_for_jobs(exp, "sft/")
    time.sleep(3)
    os.killpg(driver.pid, signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130
    assert "Traceback" not in err and err.rstrip().endswith("empo: interrupted")
    manifest = json.loads((exp / "manifest.json").read_text())
    assert {e.get("state") for e in manifest["jobs"].values()} == {"CANCELLED"}
    assert not [p for p in exp.rglob("*") if p.name.endswith(".tmp")]
    assert not [lock for lock in exp.rglob(".*.lock")
                if is_locked(lock.parent, lock.name[1:-len(".lock")])]
