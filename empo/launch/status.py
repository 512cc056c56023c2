"""What each stage of an experiment is doing: done / running / pending / failed / cancelled /
not-run, with its job id, log and the reason, from the DONE markers, manifest.json and the job
states (SLURM accounting through submitit's sacct watcher; process ids for local jobs).
Also `cancel`: stop every unfinished job of an experiment.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from empo.errors import LaunchError
from empo.pipeline import Graph

RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "UNKNOWN",
           "PREEMPTED", ""}
LIVE = RUNNING | {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED"}
FAILED = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
          "SPECIAL_EXIT", "REVOKED"}
STATE_STYLES = {"done": "green", "running": "cyan", "pending": "yellow", "failed": "bold red",
                "cancelled": "magenta", "not-run": "dim"}


@dataclass
class StageStatus:
    """One row of `empo status` and of `empo run`'s live table."""

    key: str
    state: str                  # done | running | pending | failed | cancelled | not-run
    job_id: str | None = None
    log: str | None = None
    reason: str = ""
    blocked_by: str | None = None   # the failed stage that keeps this one from running

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def normalize(state: str | None) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; None -> ''."""
    return (state or "").split(" ")[0].upper().rstrip("+")


def stage_statuses(graph: Graph, jobs: dict[str, dict[str, Any]],
                   job_states: dict[str, str]) -> list[StageStatus]:
    """Pure, the one derivation of stage status (used by `empo status` and `empo run`): each
    stage's state from its marker and outputs, its job entry (`job_id`, `stderr`, optional
    `error`) and its job's state (SLURM names)."""
    out: dict[str, StageStatus] = {}
    for stage in graph:
        entry = jobs.get(stage.key) or {}
        job_id = entry.get("job_id")
        log = entry.get("stderr")
        root = next((out[d].blocked_by or d for d in stage.deps if d in out and
                     (out[d].state in ("failed", "cancelled") or out[d].blocked_by)), None)
        if stage.is_done():
            out[stage.key] = StageStatus(stage.key, "done", job_id, log)
            continue
        found = stage.output_problem() if all(p.exists() for p in stage.markers()) else None
        if found is not None:  # marked done, but what it wrote does not parse
            out[stage.key] = StageStatus(stage.key, "failed", job_id, log,
                                         f"{found[1]}; the next run moves it aside and redoes it")
            continue
        state = normalize(job_states.get(job_id)) if job_id else None
        blocked = f"dependency {root} {out[root].state}" if root else ""
        same_job = [d for d in stage.deps if (jobs.get(d) or {}).get("job_id") == job_id and job_id]
        if state is None:
            status = StageStatus(stage.key, "not-run", None, None, blocked or "not submitted")
        elif state in RUNNING:
            status = StageStatus(stage.key, "running", job_id, log, entry.get("note", ""))
        elif state in WAITING:
            waiting = [d for d in stage.deps if d in out and out[d].state != "done"]
            why = (f"{blocked}: it will never start (empo cancel removes it)" if root else
                   f"waiting for {', '.join(waiting)}" if waiting else "")
            status = StageStatus(stage.key, "pending", job_id, log, why)
        elif state == "CANCELLED":
            status = StageStatus(stage.key, "cancelled", job_id, log, blocked or "job cancelled")
        elif root and any(d in same_job for d in _ancestors(stage.deps, graph)):
            status = StageStatus(stage.key, "not-run", job_id, log, blocked)
        elif state in FAILED:
            status = StageStatus(stage.key, "failed", job_id, log,
                                 entry.get("error") or f"job {job_id} {state}")
        else:  # COMPLETED (or unknown to us) without the marker
            names = ", ".join(p.name for p in stage.markers())
            status = StageStatus(stage.key, "failed", job_id, log,
                                 f"job {job_id} {state or 'ended'} without writing {names}")
        status.blocked_by = root if status.state not in ("failed", "cancelled") or root else None
        out[stage.key] = status
    return list(out.values())


def _ancestors(deps: tuple[str, ...], graph: Graph) -> set[str]:
    seen: set[str] = set()
    todo = list(deps)
    while todo:
        key = todo.pop()
        if key not in seen:
            seen.add(key)
            todo.extend(graph.stages[key].deps if key in graph.stages else ())
    return seen


# ----------------------------------------------------------------------------- job states

def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state of each job id (array tasks included): squeue for the jobs still in the queue
    (what it says is current), sacct (through submitit's watcher) for the ones that left it."""
    states = squeue_states(job_ids)
    ended = [job_id for job_id in job_ids if job_id not in states]
    if ended:
        from submitit.slurm.slurm import SlurmInfoWatcher

        watcher = SlurmInfoWatcher(delay_s=60)
        for job_id in ended:
            watcher.register_job(str(job_id))
        watcher.update()
        states.update({job_id: watcher.get_state(str(job_id), mode="cache") for job_id in ended})
    return states


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: state} of those `job_ids` squeue still lists ({} where squeue cannot answer)."""
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if done.returncode != 0:  # e.g. every id has left the queue ("Invalid job id specified")
        return {}
    listed = dict(line.split()[:2] for line in done.stdout.splitlines() if len(line.split()) >= 2)
    return {job_id: listed[job_id] for job_id in job_ids if job_id in listed}


def local_state(entry: dict[str, Any]) -> str:
    """A local (submitit LocalExecutor) job's state: what the driver recorded when it ended, else
    RUNNING while its controller process lives, else FAILED (the markers say what finished).
    Nothing named by the manifest is ever unpickled."""
    if entry.get("state"):
        return str(entry["state"])
    pid = int(entry["job_id"])
    return "RUNNING" if _alive(pid) else "FAILED"


def _alive(pid: int) -> bool:
    """Whether `pid` is a live submitit process (not a zombie, not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return b"submitit" in cmdline and state != "Z"


def job_states(jobs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """States of the manifest's jobs, by job id."""
    slurm = sorted({e["job_id"] for e in jobs.values() if e.get("executor") == "slurm"})
    states = slurm_states(slurm) if slurm else {}
    for entry in jobs.values():
        if entry.get("executor") == "local":
            states[entry["job_id"]] = local_state(entry)
        elif entry.get("executor") == "debug":
            states[entry["job_id"]] = entry.get("state", "UNKNOWN")
    return states


def experiment_status(graph: Graph, manifest: dict[str, Any]) -> list[StageStatus]:
    jobs = manifest.get("jobs", {})
    return stage_statuses(graph, jobs, job_states(jobs))


# ----------------------------------------------------------------------------- cancel

def cancel(graph: Graph, manifest: dict[str, Any], experiment_dir: Path | None = None,
           grace_s: float = 10.0) -> list[str]:
    """Cancel every job still pending or running for an unfinished stage, and the local driver
    (`empo run`) that would start more; then check that they stopped. Returns the job ids.

    SLURM: scancel, then wait until accounting shows them ended. Local: SIGINT to the job's
    controller, then SIGTERM, then SIGKILL to its whole process tree (a job started from a script
    with `&` ignores SIGINT). LaunchError naming the jobs that are still alive after that."""
    if experiment_dir is not None:
        stop_driver(experiment_dir, grace_s)
    statuses = experiment_status(graph, manifest)
    jobs = manifest.get("jobs", {})
    active = {s.job_id for s in statuses if s.state in ("running", "pending") and s.job_id}
    history = {f"history[{i}]": e for i, e in enumerate(manifest.get("history", []))}
    earlier = job_states(history) if history else {}  # jobs of earlier submissions, still live?
    active |= {e["job_id"] for e in history.values() if normalize(earlier.get(e["job_id"])) in LIVE}
    executor = {e["job_id"]: e.get("executor") for e in [*history.values(), *jobs.values()]}
    slurm = sorted(j for j in active if executor.get(j) == "slurm")
    if slurm:
        done = subprocess.run(["scancel", "--", *slurm], capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0:
            raise LaunchError(f"scancel {' '.join(slurm)} failed: {done.stderr.strip()}")
    local = sorted(j for j in active if executor.get(j) == "local")
    alive = [job for job in local if not stop_process_tree(int(job), grace_s)]
    deadline = time.time() + max(grace_s, 30.0)
    while slurm and time.time() < deadline:
        states = slurm_states(slurm)
        slurm = [j for j in slurm if normalize(states.get(j)) in RUNNING | {"PENDING", "REQUEUED"}]
        if slurm:
            time.sleep(1.0)
    if alive or slurm:
        raise LaunchError(f"jobs {' '.join(alive + slurm)} are still alive after cancelling; "
                          "check them with squeue / ps")
    return sorted(active)


def stop_driver(experiment_dir: Path, grace_s: float) -> None:
    """SIGTERM the `empo run` process that holds this experiment's run lock (on this host), so
    it starts nothing more and cancels what it started; wait for it to exit."""
    from empo.launch.run import run_lock_path

    try:
        holder = run_lock_path(experiment_dir).read_text().split()
    except OSError:
        return
    if len(holder) != 4 or holder[0] != "host" or not holder[3].isdigit():
        return
    import socket

    pid = int(holder[3])
    if holder[1] != socket.gethostname() or pid == os.getpid():
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"empo" not in cmdline:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + grace_s + 15
    while time.time() < deadline and Path(f"/proc/{pid}").exists() and not _zombie(pid):
        time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_process_tree(pid: int, grace_s: float = 10.0) -> bool:
    """SIGINT `pid` (a submitit local controller: it stops its tasks), then SIGTERM, then SIGKILL
    it and every descendant; True once none of them is alive."""
    if not _alive(pid):
        return True
    tree = [pid] + _children(pid)
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, grace_s / 2), (signal.SIGKILL, 5.0)):
        targets = [pid] if sig == signal.SIGINT else tree + [c for c in _children(pid) if c not in tree]
        for target in targets:
            try:
                os.kill(target, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline:
            if all(_zombie(p) or not Path(f"/proc/{p}").exists() for p in tree):
                return True
            time.sleep(0.1)
    return all(_zombie(p) or not Path(f"/proc/{p}").exists() for p in tree)


# ----------------------------------------------------------------------------- rendering

def render(statuses: list[StageStatus], title: str | None = None) -> Any:
    """A rich Table of stage statuses (the log path where there is something to read)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", expand=False)
    for column in ("stage", "state", "job", "reason", "log"):
        table.add_column(column, overflow="fold")
    for status in statuses:
        style = STATE_STYLES.get(status.state, "")
        log = status.log if status.state in ("failed", "running") and status.log else ""
        table.add_row(status.key, f"[{style}]{status.state}[/]", status.job_id or "-",
                      status.reason, log)
    return table


def console(stderr: bool = False) -> Any:
    """A rich Console; wide when not a terminal, so log paths stay on one line in files."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 240)


def summary(statuses: list[StageStatus]) -> str:
    """'12 done, 1 failed, 3 cancelled'."""
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status.state] = counts.get(status.state, 0) + 1
    order = ["done", "running", "pending", "failed", "cancelled", "not-run"]
    return ", ".join(f"{counts[s]} {s}" for s in order if s in counts)
