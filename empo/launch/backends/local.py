"""The local backend: submitit's LocalExecutor, a process per job on this machine, started by
`empo run`'s driver once the jobs it needs have succeeded. A job's id is its controller's PID;
its state is what the driver recorded, else whether that very process still runs (host, boot,
PID and start time: `empo.processes`).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from empo.config import ExperimentConfig
from empo.launch.accounting import JobInfo, local_job_info
from empo.launch.backends import Backend, Entry
from empo.launch.containers import ContainerCommand
from empo.launch.resources import Resources
from empo.launch.status import local_state, stop_process_tree
from empo.processes import ended, owned_job

log = logging.getLogger(__name__)


class Local(Backend):
    name = "local"
    job_id = re.compile(r"[0-9]{1,9}")
    processes_here = True
    runtimes = ("none", "apptainer", "podman", "charliecloud")   # pyxis needs SLURM's srun

    def executor(self, cfg: ExperimentConfig, folder: Path, resources: Resources,
                 container: ContainerCommand, dependency: str | None = None,
                 visible_gpus: tuple[int, ...] = (), script_only: bool = False) -> Any:
        """(thread counts: see `launch.job_environment`, set at submission)"""
        import submitit

        ex = submitit.LocalExecutor(folder, python=container.python,
                                    max_num_timeout=resources.max_requeues)
        ex.update_parameters(timeout_min=resources.timeout_min,
                             tasks_per_node=resources.tasks_per_node,
                             gpus_per_node=resources.gpus_per_node, visible_gpus=visible_gpus)
        return ex

    def describe(self, entries: list[Entry], experiment_dir: Path) -> dict[str, str]:
        return {entry["job_id"]: local_state(entry, experiment_dir) for entry in entries}

    def job_info(self, entries: list[Entry], states: dict[str, str]) -> dict[str, JobInfo]:
        return {entry["job_id"]: local_job_info(entry, states.get(entry["job_id"], ""))
                for entry in entries}

    def cancel(self, entries: list[Entry], live: set[str], experiment_dir: Path,
               grace_s: float) -> list[str]:
        """SIGINT to each live job's controller, then SIGTERM, then SIGKILL to its whole process
        tree (a job started from a script with `&` ignores SIGINT); only processes that are ours
        (`processes.owned_job`) are signalled."""
        owned = {e["job_id"]: owned_job(e, experiment_dir) for e in entries}
        for job_id, process in sorted(owned.items()):
            if process is None and not ended(int(job_id)) and job_id not in live:
                log.warning("process %s named by the manifest is not a job of this experiment "
                            "(host, start time or job folder differ): not signalled", job_id)
        return [job for job in sorted(live & set(owned))
                if owned[job] and not stop_process_tree(owned[job], grace_s)]


BACKEND = Local()
