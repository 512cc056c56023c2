"""`empo run` / `empo submit`: check, prepare results/<name>, start the pending stages, and (for
run) wait with a live status table on stderr.

Backends without a queue (local, debug): this process schedules each job once the jobs it needs
have succeeded, at most `parallel` at a time (the cores divided by cluster.cpus_per_task). A
queued backend (SLURM): everything is queued at once with dependencies and watched.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submitit.helpers import environment_variables

from empo.assets import ensure_tiny_assets
from empo.config import ExperimentConfig
from empo.errors import LaunchError
from empo.launch import (check_launch, clean_submission_env, job_environment, job_resources,
                         make_executor)
from empo.launch.accounting import JobInfo, this_host
from empo.launch.backends import backend, batch_backend
from empo.launch.cost import experiment_cost
from empo.launch.experiment import reruns, run_lock_path, write_experiment
from empo.launch.jobs import Unit, plan_units
from empo.launch.manifest import MANIFEST, read_manifest, record_jobs, update_job
from empo.launch.preflight import check_preflight
from empo.launch.status import (RUNNING, WAITING, StageStatus, experiment_status, job_states,
                                normalize, render, stage_statuses, summary)
from empo.launch.submit import entry, job_folder, job_name, submit_graph
from empo.pipeline import Graph, build_graph, stage_call
from empo.processes import ProcessId, owned_job
from empo.store import claim_experiment_dir, file_lock, move_aside

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How a run ended: stage statuses and where the aggregate table is."""

    graph: Graph
    statuses: list[StageStatus]
    table: Path | None = None
    moved_aside: Path | None = None
    cost: Path | None = None        # cost.csv (launch/cost.py)

    @property
    def failed(self) -> list[StageStatus]:
        return [s for s in self.statuses if s.state != "done"]


def prepare(cfg: ExperimentConfig, executor: str, force_new: bool = False,
            preflight: bool = True) -> tuple[Graph, Path | None]:
    """Validate everything, create the tiny assets, record experiment.yaml, and say which
    finished stages the config makes stale (before anything starts)."""
    check_launch(cfg, executor)
    claim_experiment_dir(cfg.experiment_dir, create=False)  # refused before any work
    _set_aside_unreadable_manifest(cfg.experiment_dir)
    if force_new and cfg.experiment_dir.exists():
        _refuse_if_active(cfg.experiment_dir)
    if cfg.assets:
        ensure_tiny_assets(cfg.resolve(cfg.assets))
    if preflight:  # every input and cluster limit, all problems at once, before anything is written

        check_preflight(cfg, executor)
    moved = write_experiment(cfg, force_new=force_new)
    graph = build_graph(cfg)
    for line in reruns(graph):
        print(f"empo: {line}", file=sys.stderr)
    return graph, moved


def _set_aside_unreadable_manifest(experiment_dir: Path) -> None:
    """A manifest the bounded reader refuses (not a regular file, too large or deep, invalid) is
    moved aside with the reason, and the run starts a new one."""
    try:
        read_manifest(experiment_dir)
    except LaunchError as err:
        moved = move_aside(experiment_dir / MANIFEST, str(err))
        log.warning("%s; moved it aside to %s", err, moved)


def _refuse_if_active(experiment_dir: Path) -> None:
    """--force-new must not move a directory that queued or running jobs still write into."""
    jobs = read_manifest(experiment_dir).get("jobs", {})
    if not jobs:
        return
    states = job_states(jobs, experiment_dir)
    live = RUNNING | (WAITING - {"UNKNOWN", ""})  # UNKNOWN: accounting has no record (old cluster)
    active = sorted({job for job, state in states.items() if normalize(state) in live})
    if active:
        raise LaunchError(f"{experiment_dir}: jobs {' '.join(active)} are still queued or running; "
                          f"`empo cancel {experiment_dir}` first, then --force-new")


# ----------------------------------------------------------------------------- local / debug

def driver_lock(cfg: ExperimentConfig) -> Any:
    """One driver per experiment at a time: a second `empo run`/`submit` gets one clear line."""
    cfg.experiment_dir.parent.mkdir(parents=True, exist_ok=True)
    return file_lock(run_lock_path(cfg.experiment_dir), blocking=False,
                     what=f"experiment {cfg.experiment_dir} (empo run/submit)")


class _Stopped(KeyboardInterrupt):
    """SIGTERM (from `empo cancel` or the batch system) to the driver: stop like Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Stopped()


@dataclass
class _Job:
    unit: Unit
    job: Any = None
    state: str = "waiting"          # waiting | running | elsewhere | done | failed | not-run
    process: ProcessId | None = None  # its local job's process (elsewhere: an earlier driver's)
    started: float = 0.0
    reason: str = ""
    log: str | None = None
    gpus: tuple[int, ...] = ()      # the GPUs it holds while running (local executor)
    cpus: int = 0                   # the cores it was given
    took: float | None = None       # seconds it ran, once ended


def run_local(cfg: ExperimentConfig, graph: Graph, executor: str, parallel: int | None = None,
              poll_s: float = 0.5, console: Any = None) -> list[StageStatus]:
    """Run the pending stages with the local or debug executor; returns the final statuses."""
    from rich.live import Live

    folder = job_folder(cfg, executor)
    parallel = parallel or max(1, (os.cpu_count() or 1) // max(1, cfg.cluster.cpus_per_task))
    jobs = {unit.key: _Job(unit) for unit in plan_units(graph)}
    gpus = local_gpus(cfg.cluster.gpus_per_node) if backend(executor).processes_here else []
    _adopt_live_jobs(cfg, jobs, gpus)
    console = console or _console()
    say = console.print
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    with Live(render(_local_statuses(graph, jobs)), console=console, refresh_per_second=2,
              transient=False) as live:
        try:
            while any(j.state in ("waiting", "running", "elsewhere") for j in jobs.values()):
                _start_ready(cfg, executor, folder, jobs, parallel, gpus, say)
                _collect(cfg, jobs, gpus, say)
                live.update(render(_local_statuses(graph, jobs)))
                if any(j.state in ("running", "elsewhere") for j in jobs.values()):
                    time.sleep(poll_s)
        except BaseException:
            _stop_started(cfg, jobs, executor)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        statuses = _local_statuses(graph, jobs)
        live.update(render(statuses, title=f"{cfg.name}: {summary(statuses)}"))
    return statuses


def _adopt_live_jobs(cfg: ExperimentConfig, jobs: dict[str, _Job], gpus: list[int]) -> None:
    """Units whose local job from an earlier driver is still alive (that driver was killed):
    wait for that job instead of starting the stages a second time. It counts against
    `--parallel` and keeps its GPUs (taken from `gpus`) until it ends. Only a job that is ours
    (`processes.owned_job`) is adopted; any other PID is never waited on."""
    entries = read_manifest(cfg.experiment_dir).get("jobs", {})
    for job in jobs.values():
        for stage in job.unit.stages:
            entry = entries.get(stage.key) or {}
            here = bool(entry) and backend(entry["executor"]).processes_here
            process = owned_job(entry, cfg.experiment_dir) if here and not entry.get("state") \
                else None
            if process is not None:
                job.state, job.process, job.log = "elsewhere", process, entry.get("stderr")
                held = [g for g in entry.get("gpu_ids") or [] if g in gpus]
                job.gpus = tuple(held)
                gpus[:] = [g for g in gpus if g not in held]
                break


def _stop_started(cfg: ExperimentConfig, jobs: dict[str, _Job], executor: str) -> None:
    """On Ctrl-C or SIGTERM: stop the jobs this driver started and record them as cancelled."""
    from empo.launch.status import stop_process_tree

    for job in jobs.values():
        if job.state == "running" and job.process is not None:  # a process of this machine
            stop_process_tree(job.process, grace_s=5.0)
            update_job(cfg, [s.key for s in job.unit.stages], state="CANCELLED",
                       elapsed_s=round(time.time() - job.started, 3))


def local_gpus(gpus_per_node: int) -> list[int]:
    """The GPUs local jobs share: this process's CUDA_VISIBLE_DEVICES (inside an allocation,
    e.g. jobs/pipeline.sbatch), else 0..gpus_per_node-1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [int(x) for x in visible.split(",") if x.strip().isdigit()]
    return ids if ids and visible.strip() else list(range(gpus_per_node))


def _start_ready(cfg, executor, folder, jobs, parallel, gpus, say) -> None:
    """Start waiting jobs whose deps succeeded, within `parallel` jobs and the free GPUs (`gpus`,
    taken while a job runs: concurrent local jobs never share a GPU)."""
    chosen = backend(executor)
    running = sum(j.state in ("running", "elsewhere") for j in jobs.values())  # adopted too
    for job in jobs.values():
        if job.state != "waiting":
            continue
        if any(jobs[d].state in ("failed", "not-run") for d in job.unit.deps):
            job.state = "not-run"  # (the status names the stage at fault)
            continue
        if running >= parallel or any(jobs[d].state != "done" for d in job.unit.deps):
            continue
        name = job_name(cfg, job.unit.kind, job.unit.variant)
        resources = job_resources(cfg, job.unit.kind, name)
        need = resources.gpus_per_node if chosen.processes_here else 0
        if need > len(gpus):
            continue  # wait until a running job gives its GPUs back
        job.gpus, gpus[:] = tuple(gpus[:need]), gpus[need:]
        ex = make_executor(cfg, executor, folder, resources, visible_gpus=job.gpus)
        env = job_environment(resources) if chosen.processes_here else {}
        # the job inherits this environment: no SLURM/torch distributed variables of ours
        with clean_submission_env(), environment_variables(**env), _stderr_to(folder):
            job.job = ex.submit(stage_call(job.unit.stages))
        job.state, job.started, running = "running", time.time(), running + 1
        job.log = str(job.job.paths.stderr)
        job.cpus = resources.cpus_per_task * resources.tasks_per_node
        # the process identity is what `empo cancel` and a later driver check before they
        # signal or wait on this job (host, boot, PID, start time)
        job.process = ProcessId.of(int(job.job.job_id)) if chosen.processes_here else None
        facts = {"host": this_host(), "cpus": job.cpus, "gpus": len(job.gpus),  # for the cost
                 "gpu_ids": list(job.gpus), "process": job.process and job.process.record()}
        record_jobs(cfg, executor, folder, {s.key: {**entry(job.job, job.unit, executor, folder,
                                                             None), **facts}
                                            for s in job.unit.stages})
        say(f"[cyan]start[/] {job.unit.key} (job {job.job.job_id})", highlight=False)


@contextlib.contextmanager
def _stderr_to(folder: Path) -> Iterator[None]:
    """Give a local job's controller (submitit's, started by `ex.submit`) the job folder's
    controller.log as stderr instead of the terminal: on Ctrl-C the controller prints a
    KeyboardInterrupt traceback, which belongs in a log, not on the user's screen."""
    folder.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(folder / "controller.log", "ab") as log_file:
        os.dup2(log_file.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _collect(cfg, jobs, gpus, say) -> None:
    for job in jobs.values():
        if job.state == "elsewhere" and not job.process.alive():
            done = all(stage.is_done() for stage in job.unit.stages)
            job.state = "done" if done else "waiting"  # else: start it here
            gpus.extend(job.gpus)
            job.gpus = ()
            say(f"[cyan]ended[/] {job.unit.key} (job {job.process.pid} of an earlier run)",
                highlight=False)
        if job.state != "running":
            continue
        try:
            if not job.job.done():
                continue
            error = job.job.exception()
        except Exception as err:  # noqa: BLE001 - the debug executor raises the stage's error
            error = err
        gpus.extend(job.gpus)
        job.gpus = ()
        took = job.took = time.time() - job.started
        keys = [s.key for s in job.unit.stages]
        if error is None:
            job.state = "done"
            update_job(cfg, keys, state="COMPLETED", elapsed_s=round(took, 3))
            say(f"[green]done[/]  {job.unit.key} in {took:.0f} s", highlight=False)
        else:
            job.state, job.reason = "failed", _last_line(str(error))
            update_job(cfg, keys, state="FAILED", elapsed_s=round(took, 3))
            say(f"[bold red]FAILED[/] {job.unit.key} after {took:.0f} s: {job.reason}\n"
                f"       log: {job.log}", highlight=False)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()
             and not line.startswith("-----")]
    tail = [line for line in lines if not line.startswith(("You can check full logs", "or at paths",
                                                           "- /"))]
    return (tail or lines or ["unknown error"])[-1][:300]


_LOCAL_STATES = {"waiting": "PENDING", "running": "RUNNING", "elsewhere": "RUNNING",
                 "done": "COMPLETED", "failed": "FAILED"}


def _local_statuses(graph: Graph, jobs: dict[str, _Job]) -> list[StageStatus]:
    """The driver's jobs as job entries and states for the one status derivation
    (`status.stage_statuses`): a job not started yet is PENDING, one never to start has none."""
    entries: dict[str, dict[str, Any]] = {}
    states: dict[str, str] = {}
    details: dict[str, JobInfo] = {}
    for job in jobs.values():
        if job.state not in _LOCAL_STATES:
            continue
        job_id = (str(job.job.job_id) if job.job is not None else
                  str(job.process.pid) if job.process else f"local:{job.unit.key}")
        states[job_id] = _LOCAL_STATES[job.state]
        if job.job is not None:
            elapsed = job.took if job.took is not None else time.time() - job.started
            details[job_id] = JobInfo(job_id, states[job_id], elapsed, this_host(),
                                      cpus=job.cpus, gpus=len(job.gpus), source="local")
        for stage in job.unit.stages:
            entries[stage.key] = {"job_id": job_id, "stderr": job.log, "error": job.reason,
                                  "note": "started by an earlier empo run; waiting for it"
                                  if job.state == "elsewhere" else ""}
    return stage_statuses(graph, entries, states, details)


# ----------------------------------------------------------------------------- slurm

def wait_slurm(cfg: ExperimentConfig, graph: Graph, poll_s: float = 5.0,
               timeout_s: float | None = None, console: Any = None) -> list[StageStatus]:
    """Watch a submitted experiment until nothing can progress; cancels jobs left waiting on a
    failed dependency (on clusters that do not kill them)."""
    from rich.live import Live

    console = console or _console()
    start = time.time()
    statuses = experiment_status(graph, read_manifest(cfg.experiment_dir))
    seen = {s.key: s.state for s in statuses}
    with Live(render(statuses), console=console, refresh_per_second=1, transient=False) as live:
        while True:
            statuses = experiment_status(graph, read_manifest(cfg.experiment_dir))
            for status in statuses:
                if seen.get(status.key) != status.state:
                    seen[status.key] = status.state
                    console.print(f"{status.state:9} {status.key} {status.reason}", highlight=False)
            live.update(render(statuses))
            active = [s for s in statuses if s.state in ("running", "pending")]
            stuck = [s for s in active if s.state == "pending" and s.blocked_by]
            if len(stuck) == len(active):
                if stuck:
                    from empo.launch.status import cancel

                    cancel(graph, read_manifest(cfg.experiment_dir))
                    statuses = experiment_status(graph, read_manifest(cfg.experiment_dir))
                break
            if timeout_s is not None and time.time() - start > timeout_s:
                raise LaunchError(f"{cfg.experiment_dir}: still running after {timeout_s:.0f} s "
                                  f"({summary(statuses)})")
            time.sleep(poll_s)
        live.update(render(statuses, title=f"{cfg.name}: {summary(statuses)}"))
    return statuses


# ----------------------------------------------------------------------------- entry points

def run_experiment(cfg: ExperimentConfig, executor: str, force_new: bool = False,
                   parallel: int | None = None, console: Any = None,
                   preflight: bool = True) -> Outcome:
    """`empo run`: all pending stages, waited for; the aggregate table path when it exists."""
    check_launch(cfg, executor)
    with driver_lock(cfg):
        graph, moved = prepare(cfg, executor, force_new, preflight)
        if backend(executor).queued:  # the batch system starts the jobs; this process waits
            submit_graph(cfg, graph, job_folder(cfg, executor))
            statuses = wait_slurm(cfg, graph, console=console)
        else:
            statuses = run_local(cfg, graph, executor, parallel=parallel, console=console)
    table = cfg.experiment_dir / "table.csv"
    return Outcome(graph, statuses, table if table.exists() else None, moved, write_costs(graph))


def write_costs(graph: Graph) -> Path | None:
    """cost.csv and table.md's footer from what the jobs recorded (sacct / local timings)."""
    from empo.launch.status import experiment_report

    statuses, details = experiment_report(graph, read_manifest(graph.experiment_dir))
    return experiment_cost(graph, statuses, details)


def submit_experiment(cfg: ExperimentConfig, force_new: bool = False, preflight: bool = True
                      ) -> tuple[Graph, dict[str, Any], Path | None]:
    """`empo submit`: queue all pending stages on the batch system (cluster.executor's when it
    has a queue, else SLURM: `backends.batch_backend`) and return at once."""
    executor = batch_backend(cfg.cluster.executor).name
    check_launch(cfg, executor)
    with driver_lock(cfg):
        graph, moved = prepare(cfg, executor, force_new, preflight)
        entries = submit_graph(cfg, graph, job_folder(cfg, executor))
    return graph, entries, moved


def _console() -> Any:
    from empo.launch.status import console

    return console(stderr=True)


__all__ = ["Outcome", "prepare", "run_experiment", "run_local", "submit_experiment", "wait_slurm"]
