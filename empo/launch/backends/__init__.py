"""The backends stages run on, one module each (slurm, local, debug), behind one interface after
torchx's `Scheduler`: make the submitit executor that submits a job or array, render its job
script (dry run), describe jobs (their states and accounting), list an experiment's jobs, cancel
them, find their logs, and the form of a job id. A backend module is imported by name only when
used: `backend("slurm")`. Its config fields are declared in `empo.executors` (below the config).
Nothing here imports submitit: a backend imports it inside the functions that submit.
"""
from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from empo.errors import LaunchError
from empo.executors import EXECUTORS

if TYPE_CHECKING:
    from empo.config import ExperimentConfig
    from empo.launch.accounting import JobInfo
    from empo.launch.containers import ContainerCommand
    from empo.launch.preflight import Problem
    from empo.launch.resources import Resources
    from empo.pipeline import Graph

BATCH = "slurm"   # what `empo submit` queues on when cluster.executor has no queue of its own

Entry = dict[str, Any]   # one job's manifest entry: job_id, executor, stdout, stderr, state, ...


class Backend(ABC):
    """One executor. Job states are SLURM's names (PENDING, RUNNING, COMPLETED, FAILED, ...)."""

    name: ClassVar[str]
    job_id: ClassVar[re.Pattern[str]]   # the form of its job ids (they reach its tools as arguments)
    queued: ClassVar[bool] = False      # a batch system starts the jobs in dependency order, so
    #                                     the whole graph is queued at once (`empo submit`)
    processes_here: ClassVar[bool] = False  # each job is a process on this machine (its job id
    #                                         its PID): jobs share this machine's GPUs and start
    #                                         with this process's environment
    in_process: ClassVar[bool] = False  # stages run inside this Python process (no container)
    remote: ClassVar[bool] = False      # jobs run on other machines (this one may lack the
    #                                     container runtime they have)
    requeue_signal: ClassVar[bool] = False  # it signals a job ahead of its time limit, so the
    #                                         job checkpoints and requeues (cluster.signal_lead_s)
    runtimes: ClassVar[tuple[str, ...]] = ()   # the container runtimes it can start jobs in
    options: ClassVar[type | None] = None   # its own config fields (`cluster.*`), if it has any

    def check(self, cfg: ExperimentConfig) -> None:
        """LaunchError for what this machine lacks to submit (a missing tool)."""

    @abstractmethod
    def executor(self, cfg: ExperimentConfig, folder: Path, resources: Resources,
                 container: ContainerCommand, dependency: str | None = None,
                 visible_gpus: tuple[int, ...] = (), script_only: bool = False) -> Any:
        """submit: the submitit executor whose `submit`/`submit_array` starts one job (or an
        array) with `resources` inside `container`, after `dependency` (a batch system's)."""

    def script(self, executor: Any, count: int) -> str:
        """dry run: the job script `executor` would submit (one job, or an array of `count`)."""
        raise LaunchError(f"the {self.name} executor writes no job script; the dry run renders "
                          f"the scripts of a batch system ({', '.join(batch_names())})")

    def preflight(self, cfg: ExperimentConfig, graph: Graph) -> list[Problem]:
        """The problems of running `graph`'s jobs here (cluster limits), before anything starts."""
        return []

    @abstractmethod
    def describe(self, entries: list[Entry], experiment_dir: Path) -> dict[str, str]:
        """{job id: state} of these jobs (entries of one experiment's manifest)."""

    def job_info(self, entries: list[Entry], states: dict[str, str]) -> dict[str, JobInfo]:
        """What accounting knows of these jobs beyond their state (elapsed, nodes, ...)."""
        return {}

    def list(self, jobs: dict[str, Entry]) -> dict[str, Entry]:
        """The entries of `jobs` (stage key -> a manifest's job entry) that this backend ran."""
        return {key: entry for key, entry in jobs.items() if entry.get("executor") == self.name}

    @abstractmethod
    def cancel(self, entries: list[Entry], live: set[str], experiment_dir: Path,
               grace_s: float) -> list[str]:
        """Stop the jobs among `entries` (this backend's in one experiment's manifest) whose ids
        are in `live`; the ids of those still alive afterwards."""

    def logs(self, entry: Entry, err: bool = False) -> Path | None:
        """The job's stdout (or stderr) log as the manifest names it."""
        path = entry.get("stderr" if err else "stdout")
        return Path(path) if path else None


def backend(name: str) -> Backend:
    """The backend of executor `name` (its module imported now); LaunchError naming the allowed
    ones."""
    if name not in EXECUTORS:
        raise LaunchError(f"unknown executor {name!r}; allowed: {', '.join(EXECUTORS)}")
    return importlib.import_module(f"{__name__}.{name}").BACKEND


def batch_backend(name: str) -> Backend:
    """The backend `empo submit` queues on: executor `name`'s when it has a queue, else SLURM's
    (submit returns at once, so a batch system, not this process, must start the jobs)."""
    chosen = backend(name)
    return chosen if chosen.queued else backend(BATCH)


def batch_names() -> list[str]:
    """The executors with a queue (`empo submit`, the dry run)."""
    return [name for name in EXECUTORS if backend(name).queued]


def by_backend(entries: Iterable[Entry]) -> dict[str, tuple[Backend, list[Entry]]]:
    """Job entries grouped by the backend that ran them (executor name -> (backend, entries))."""
    out: dict[str, tuple[Backend, list[Entry]]] = {}
    for entry in entries:
        name = str(entry.get("executor"))
        out.setdefault(name, (backend(name), []))[1].append(entry)
    return out


__all__ = ["BATCH", "Backend", "Entry", "backend", "batch_backend", "batch_names", "by_backend"]
