"""What each stage of an experiment is doing: done / running / pending / failed / cancelled /
not-run, with its job id, log and the reason, from the DONE markers, manifest.json and the job
states each backend describes (`launch/backends/`: squeue/sacct, the local driver's record).
Also `cancel`: stop every unfinished job of an experiment.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from empo.errors import LaunchError
from empo.launch.accounting import JobInfo, exception_line, job_info
from empo.launch.backends import by_backend
from empo.launch.experiment import run_lock_path
from empo.pipeline import Graph, Stage
from empo.processes import ProcessId, ended, owned_job
from empo.reader import inside
from empo.store import lock_held, lock_holder

RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "UNKNOWN",
           "PREEMPTED", ""}
LIVE = RUNNING | {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED"}
FAILED = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
          "SPECIAL_EXIT", "REVOKED"}
log = logging.getLogger(__name__)
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
    slurm_state: str = ""           # the job's own state (OUT_OF_MEMORY, TIMEOUT, PREEMPTED, ...)
    exit_code: str = ""             # SLURM's code:signal
    error: str = ""                 # a failed stage: the last line of its exception (job log)
    elapsed_s: float | None = None  # the job's run time (all attempts)
    nodes: str = ""
    requeues: int = 0
    gpu_hours: float | None = None  # this stage's share of its job's GPU-hours (launch/cost.py)
    cpu_hours: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def normalize(state: str | None) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; None -> ''."""
    return (state or "").split(" ")[0].upper().rstrip("+")


def stage_statuses(graph: Graph, jobs: dict[str, dict[str, Any]],
                   job_states: dict[str, str],
                   details: dict[str, JobInfo] | None = None) -> list[StageStatus]:
    """Pure, the one derivation of stage status (used by `empo status` and `empo run`): each
    stage's state from its marker and outputs, its job entry (`job_id`, `stderr`, optional
    `error`: the exception's last line) and its job's state (SLURM names); `details` (by job id:
    elapsed, nodes, requeues, exit code, pending reason) fill the rest of the row."""
    out = _statuses(graph, jobs, job_states, details or {})
    return [_with_details(s, (details or {}).get(s.job_id or ""), jobs.get(s.key) or {},
                          normalize(job_states.get(s.job_id or "")))
            for s in out.values()]


def _with_details(status: StageStatus, info: JobInfo | None, entry: dict[str, Any],
                  state: str) -> StageStatus:
    """The row's job facts; the SLURM reason where it explains the state (pending: why; failed:
    the state and exit code beside the exception line)."""
    status.slurm_state = state
    if status.state in ("failed", "cancelled") and entry.get("error"):
        status.error = str(entry["error"])
    if info is None:
        return status
    status.elapsed_s, status.nodes, status.requeues = info.elapsed_s, info.nodes, info.requeues
    status.exit_code = info.exit_code if state not in RUNNING | WAITING else ""
    if status.state == "pending" and info.reason and not status.blocked_by:
        status.reason = "; ".join(filter(None, [status.reason, f"SLURM: {info.reason}"]))
    return status


def _statuses(graph: Graph, jobs: dict[str, dict[str, Any]], job_states: dict[str, str],
              details: dict[str, JobInfo]) -> dict[str, StageStatus]:
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
        marked = all(p.exists() for p in stage.markers())
        found = stage.output_problem() if marked else None
        if found is not None:  # marked done, but what it wrote does not parse
            out[stage.key] = StageStatus(stage.key, "failed", job_id, log,
                                         f"{found[1]}; the next run moves it aside and redoes it")
            continue
        stale = _stale_text(stage) if marked else ""
        state = normalize(job_states.get(job_id)) if job_id else None
        blocked = f"dependency {root} {out[root].state}" if root else ""
        same_job = [d for d in stage.deps if (jobs.get(d) or {}).get("job_id") == job_id and job_id]
        if state is None:
            status = StageStatus(stage.key, "not-run", None, None,
                                 stale or blocked or "not submitted")
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
            info = details.get(job_id)
            code = f" (exit {info.exit_code})" if info and info.exit_code not in ("", "0:0") else ""
            error = entry.get("error") or ""
            status = StageStatus(stage.key, "failed", job_id, log,
                                 f"job {job_id} {state}{code}" + (f": {error}" if error else ""))
        elif stale:  # its job finished it under another identity (config, model or data changed)
            status = StageStatus(stage.key, "not-run", job_id, log, stale)
        else:  # COMPLETED (or unknown to us) without the marker
            names = ", ".join(p.name for p in stage.markers())
            status = StageStatus(stage.key, "failed", job_id, log,
                                 f"job {job_id} {state or 'ended'} without writing {names}")
        status.blocked_by = root if status.state not in ("failed", "cancelled") or root else None
        out[stage.key] = status
    return out


def _stale_text(stage: Stage) -> str:
    """Why a stage whose marker is there is not done: its outputs were made under another
    fingerprint (what changed), or '' when they were not."""
    if stage.superseded() is None:
        return ""
    changed = stage.changed_fields()
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    return (f"finished under another identity, changed since: {', '.join(changed[:4])}{more}; "
            "the next run or submit redoes it")


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

def local_state(entry: dict[str, Any], experiment_dir: Path) -> str:
    """A local (submitit LocalExecutor) job's state: what the driver recorded when it ended, else
    RUNNING while its controller process lives and is ours (`processes.owned_job`: host, boot,
    PID, start time and experiment match), else FAILED (the markers say what finished). A PID
    that now names some other process is never taken for the job. Nothing named by the manifest
    is ever unpickled."""
    if entry.get("state"):
        return str(entry["state"])
    return "RUNNING" if owned_job(entry, experiment_dir) is not None else "FAILED"


def job_states(jobs: dict[str, dict[str, Any]], experiment_dir: Path) -> dict[str, str]:
    """States of the manifest's jobs (of the experiment in `experiment_dir`), by job id, as the
    backend that ran each describes them."""
    states: dict[str, str] = {}
    for chosen, entries in by_backend(jobs.values()).values():
        states.update(chosen.describe(entries, experiment_dir))
    return states


def experiment_status(graph: Graph, manifest: dict[str, Any]) -> list[StageStatus]:
    return experiment_report(graph, manifest)[0]


def experiment_report(graph: Graph, manifest: dict[str, Any]
                      ) -> tuple[list[StageStatus], dict[str, JobInfo]]:
    """Every stage's status from the run store, the manifest and what SLURM (sacct, squeue) or
    the local driver recorded, and those job facts by job id; a failed job's exception line is
    read from its stderr log (as text)."""
    jobs = manifest.get("jobs", {})
    states = job_states(jobs, graph.experiment_dir)
    details = job_info(jobs, states)
    ended = FAILED | {"CANCELLED", "COMPLETED"}
    jobs = {key: ({**entry, "error": entry.get("error") or exception_line(_own_log(entry, graph))}
                  if normalize(states.get(entry.get("job_id", ""))) in ended else entry)
            for key, entry in jobs.items()}
    return stage_statuses(graph, jobs, states, details), details


def _own_log(entry: dict[str, Any], graph: Graph) -> str | None:
    """The entry's stderr log when it lies inside the experiment directory (a manifest naming
    /etc/passwd or /dev/zero is not read)."""
    log_path = entry.get("stderr")
    return log_path if log_path and inside(log_path, graph.experiment_dir) else None


# ----------------------------------------------------------------------------- cancel

def cancel(graph: Graph, manifest: dict[str, Any], experiment_dir: Path | None = None,
           grace_s: float = 10.0) -> list[str]:
    """Cancel every job still pending or running for an unfinished stage, and the local driver
    (`empo run`) that would start more; then check that they stopped. Returns the job ids.

    Each backend stops its own jobs (`Backend.cancel`: SLURM's scancel and a wait until
    accounting shows them ended; a local job's process tree, SIGINT, SIGTERM, then SIGKILL).
    LaunchError naming the jobs that are still alive after that."""
    if experiment_dir is not None:
        stop_driver(experiment_dir, grace_s)
    statuses = experiment_status(graph, manifest)
    jobs = manifest.get("jobs", {})
    active = {s.job_id for s in statuses if s.state in ("running", "pending") and s.job_id}
    history = {f"history[{i}]": e for i, e in enumerate(manifest.get("history", []))}
    earlier = job_states(history, graph.experiment_dir) if history else {}  # still live?
    active |= {e["job_id"] for e in history.values() if normalize(earlier.get(e["job_id"])) in LIVE}
    alive: list[str] = []
    for chosen, entries in by_backend([*history.values(), *jobs.values()]).values():
        alive += chosen.cancel(entries, active, graph.experiment_dir, grace_s)
    if alive:
        raise LaunchError(f"jobs {' '.join(alive)} are still alive after cancelling; "
                          "check them with squeue / ps")
    return sorted(active)


def stop_driver(experiment_dir: Path, grace_s: float) -> None:
    """SIGTERM the `empo run` process that holds this experiment's run lock now, so it starts
    nothing more and cancels what it started; wait for it to exit. Only a process that matches
    the lock's record (host, boot, PID, start time), holds the lock and runs empo is signalled:
    a stale lock whose PID was reused by another process is left alone."""
    lock = run_lock_path(experiment_dir)
    process = lock_holder(lock)
    if process is None or process.pid == os.getpid():
        return
    if not (process.alive() and lock_held(lock)
            and any("empo" in word for word in process.cmdline())):
        log.warning("%s names process %d, which is not the driver of this experiment (or no "
                    "longer runs): not signalled", lock, process.pid)
        return
    os.kill(process.pid, signal.SIGTERM)
    deadline = time.time() + grace_s + 15
    while time.time() < deadline and process.alive():
        time.sleep(0.2)


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


def stop_process_tree(process: ProcessId, grace_s: float = 10.0) -> bool:
    """SIGINT `process` (a submitit local controller of ours: it stops its tasks), then SIGTERM,
    then SIGKILL it and every descendant; True once none of them is alive. Nothing is signalled
    unless `process` is still the very process recorded (`ProcessId.alive`)."""
    if not process.alive():
        return True
    pid = process.pid
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
            if all(ended(p) for p in tree):
                return True
            time.sleep(0.1)
    return all(ended(p) for p in tree)


# ----------------------------------------------------------------------------- rendering

REASON_WIDTH = 44  # longer reasons wrap in their column: the table stays ~120 characters wide


def render(statuses: list[StageStatus], title: str | None = None) -> Any:
    """A rich Table of stage statuses: elapsed (and requeues), node, the reason, and GPU-/CPU-
    hours with a total when costs are known. Log paths are not in it (they made it 250
    characters wide): `empo logs` prints a stage's log, `--json` has the paths."""
    from rich.table import Table

    costed = any(s.gpu_hours is not None for s in statuses)
    logs = any(s.state in ("failed", "running") and s.log for s in statuses)
    table = Table(title=title, title_justify="left", expand=False, show_footer=costed,
                  caption="logs: empo logs RESULTS_DIR STAGE [--err]" if logs else None,
                  caption_justify="left")
    gpu = sum(s.gpu_hours or 0.0 for s in statuses)
    cpu = sum(s.cpu_hours or 0.0 for s in statuses)
    columns = ["stage", "state", "job", "elapsed", "node", "reason"]
    footers = {"stage": "total", "GPU-h": f"{gpu:.2f}", "CPU-h": f"{cpu:.2f}"}
    for column in columns + (["GPU-h", "CPU-h"] if costed else []):
        table.add_column(column, footer=footers.get(column, ""), overflow="fold",
                         max_width=REASON_WIDTH if column == "reason" else None,
                         justify="right" if column.endswith("-h") else "left")
    for status in statuses:
        style = STATE_STYLES.get(status.state, "")
        row = [status.key, f"[{style}]{status.state}[/]", status.job_id or "-",
               elapsed_text(status), status.nodes, status.reason]
        if costed:
            row += [_hours(status.gpu_hours), _hours(status.cpu_hours)]
        table.add_row(*row)
    return table


def _hours(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def elapsed_text(status: StageStatus) -> str:
    """'1:02:03', '0:00:42 (requeued 2x)', '' when the job never ran."""
    if status.elapsed_s is None:
        return ""
    seconds = int(round(status.elapsed_s))
    text = f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return text + (f" (requeued {status.requeues}x)" if status.requeues else "")


def console(stderr: bool = False) -> Any:
    """A rich Console; wide when not a terminal, so lines are not cut in files."""
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
