"""What each stage of an experiment is doing: done / running / pending / failed / cancelled /
not-run, with its job id, log and the reason, from the DONE markers, manifest.json and the job
states (SLURM accounting through submitit's sacct watcher; process ids for local jobs).
Also `cancel`: stop every unfinished job of an experiment.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from empo.errors import LaunchError
from empo.pipeline import Graph

RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "UNKNOWN",
           "PREEMPTED", ""}
FAILED = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
          "SPECIAL_EXIT", "REVOKED"}
STATE_STYLES = {"done": "green", "running": "cyan", "pending": "yellow", "failed": "bold red",
                "cancelled": "magenta", "not-run": "dim"}


@dataclass
class StageStatus:
    """One row of `empo status`."""

    key: str
    state: str                  # done | running | pending | failed | cancelled | not-run
    job_id: str | None = None
    log: str | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def normalize(state: str | None) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; None -> ''."""
    return (state or "").split(" ")[0].upper().rstrip("+")


def stage_statuses(graph: Graph, jobs: dict[str, dict[str, Any]],
                   job_states: dict[str, str]) -> list[StageStatus]:
    """Pure: each stage's status from its marker, its manifest entry and its job's state."""
    out: dict[str, StageStatus] = {}
    for stage in graph:
        entry = jobs.get(stage.key) or {}
        job_id = entry.get("job_id")
        log = entry.get("stderr")
        root = _root_cause(stage.deps, out)
        if stage.is_done():
            out[stage.key] = StageStatus(stage.key, "done", job_id, log)
            continue
        state = normalize(job_states.get(job_id)) if job_id else None
        same_job = [d for d in stage.deps if (jobs.get(d) or {}).get("job_id") == job_id and job_id]
        if state is None:
            status = StageStatus(stage.key, "not-run", None, None,
                                 f"dependency {root} failed" if root else "not submitted")
        elif state in RUNNING:
            status = StageStatus(stage.key, "running", job_id, log)
        elif state in WAITING:
            why = (f"dependency {root} failed: it will never start (empo cancel removes it)"
                   if root else "")
            status = StageStatus(stage.key, "pending", job_id, log, why)
        elif state == "CANCELLED":
            status = StageStatus(stage.key, "cancelled", job_id, log,
                                 f"dependency {root} failed" if root else "job cancelled")
        elif root and any(d in same_job for d in _ancestors(stage.deps, graph)):
            status = StageStatus(stage.key, "not-run", job_id, log, f"dependency {root} failed")
        elif state in FAILED:
            status = StageStatus(stage.key, "failed", job_id, log, f"job {job_id} {state}")
        else:  # COMPLETED (or unknown to us) without the marker
            names = ", ".join(p.name for p in stage.markers())
            status = StageStatus(stage.key, "failed", job_id, log,
                                 f"job {job_id} {state or 'ended'} without writing {names}")
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


def _root_cause(deps: tuple[str, ...], known: dict[str, StageStatus]) -> str | None:
    """The failed stage that keeps one of `deps` from running, if any."""
    for dep in deps:
        status = known.get(dep)
        if status is None:
            continue
        if status.state == "failed":
            return dep
        if status.state in ("cancelled", "not-run", "pending") and " failed" in status.reason:
            return status.reason.split("dependency ", 1)[1].split(" failed", 1)[0]
    return None


# ----------------------------------------------------------------------------- job states

def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state of each job id (array tasks included), from sacct via submitit's watcher."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    watcher = SlurmInfoWatcher(delay_s=60)
    for job_id in job_ids:
        watcher.register_job(str(job_id))
    watcher.update()
    return {job_id: watcher.get_state(str(job_id), mode="cache") for job_id in job_ids}


def local_state(entry: dict[str, Any]) -> str:
    """A local (submitit LocalExecutor) job's state from its result pickle and its process."""
    result = Path(entry.get("folder", "")) / f"{entry['job_id']}_0_result.pkl"
    if result.exists():
        try:
            with open(result, "rb") as handle:
                outcome = pickle.load(handle)[0]
        except Exception:  # noqa: BLE001 - being written, or unreadable: say running
            return "RUNNING"
        return "COMPLETED" if outcome == "success" else "FAILED"
    if entry.get("state"):
        return entry["state"]
    pid = int(entry["job_id"]) if str(entry["job_id"]).isdigit() else None
    if pid and _alive(pid):
        return "RUNNING"
    return "FAILED"


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"submitit" in cmdline


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

def cancel(graph: Graph, manifest: dict[str, Any]) -> list[str]:
    """Cancel every job still pending or running for an unfinished stage; returns their ids."""
    statuses = experiment_status(graph, manifest)
    jobs = manifest.get("jobs", {})
    active = {s.job_id for s in statuses if s.state in ("running", "pending") and s.job_id}
    slurm = sorted(j for j in active if any(e["job_id"] == j and e.get("executor") == "slurm"
                                            for e in jobs.values()))
    if slurm:
        done = subprocess.run(["scancel", *slurm], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise LaunchError(f"scancel {' '.join(slurm)} failed: {done.stderr.strip()}")
    for job_id in sorted(active - set(slurm)):
        if job_id.isdigit() and _alive(int(job_id)):
            os.kill(int(job_id), signal.SIGINT)  # submitit's local controller stops its tasks
    return sorted(active)


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
