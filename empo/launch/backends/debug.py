"""The debug backend: submitit's DebugExecutor runs each stage inside this Python process (for
pdb), when `empo run`'s driver asks for its result; no container, no job script, nothing to
cancel once the driver has stopped.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from empo.config import ExperimentConfig
from empo.launch.backends import Backend, Entry
from empo.launch.containers import ContainerCommand
from empo.launch.resources import Resources


class Debug(Backend):
    name = "debug"
    job_id = re.compile(r"[A-Za-z0-9_.-]{1,64}")
    in_process = True

    def executor(self, cfg: ExperimentConfig, folder: Path, resources: Resources,
                 container: ContainerCommand, dependency: str | None = None,
                 visible_gpus: tuple[int, ...] = (), script_only: bool = False) -> Any:
        import submitit

        ex = submitit.AutoExecutor(folder, cluster="debug")
        ex.update_parameters(name=resources.name, timeout_min=resources.timeout_min)
        return ex

    def describe(self, entries: list[Entry], experiment_dir: Path) -> dict[str, str]:
        """What the driver recorded when the job ended (UNKNOWN before)."""
        return {entry["job_id"]: entry.get("state", "UNKNOWN") for entry in entries}

    def cancel(self, entries: list[Entry], live: set[str], experiment_dir: Path,
               grace_s: float) -> list[str]:
        """Nothing runs outside the driver, which `empo cancel` stops first."""
        return []


BACKEND = Debug()
