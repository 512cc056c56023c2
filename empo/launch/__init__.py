"""Where stages run: one thin facade over the backends (`launch/backends/`: slurm, local, debug,
each a module behind one interface) and the container runtimes.
Everything is validated before the first job starts: an unknown executor or runtime, a missing
image, no `sbatch` on PATH are LaunchErrors naming what is allowed. No torch is imported here.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from empo.config import RUNTIMES, ExperimentConfig
from empo.executors import EXECUTORS
from empo.launch.backends import backend
from empo.launch.containers import ContainerCommand, check_container, container_command
from empo.launch.resources import Resources, job_resources

__all__ = ["EXECUTORS", "RUNTIMES", "Resources", "check_executor", "check_launch",
           "clean_submission_env", "job_environment", "job_resources", "make_executor"]


def check_executor(name: str) -> str:
    """The executor name, or LaunchError listing the allowed ones."""
    return backend(name).name


def check_launch(cfg: ExperimentConfig, executor: str) -> None:
    """Everything that can be checked before submitting anything."""
    chosen = backend(executor)
    check_container(cfg, executor)
    chosen.check(cfg)


def job_environment(resources: Resources) -> dict[str, str]:
    """Variables a job starts with, unless the user set them: torch's thread pools sized to the
    job's cores rather than the machine's (two local jobs on two cores must not run four
    threads), and a fixed PYTHONHASHSEED (bert-score orders equal-length sentences by set order:
    without it F_BERT differs in the last float32 bit between two identical runs). The Hub
    variables of `resources.env` (cluster.hf_home, cluster.offline) are always set."""
    env = {"PYTHONHASHSEED": "0"}
    if "OMP_NUM_THREADS" not in os.environ:
        env.update(OMP_NUM_THREADS=str(resources.cpus_per_task),
                   MKL_NUM_THREADS=str(resources.cpus_per_task))
    return {**{k: v for k, v in env.items() if k not in os.environ}, **resources.env}


@contextlib.contextmanager
def clean_submission_env() -> Iterator[None]:
    """Submit without this process's job variables (SLURM_*, SUBMITIT_*, RANK, MASTER_PORT, ...):
    a job submitted from inside another job (jobs/pipeline.sbatch, a test under a job) must not
    inherit them. SLURM_CONF and SBATCH_* (the user's sbatch defaults) are kept."""
    names = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    hidden = {k: os.environ.pop(k) for k in list(os.environ)
              if (k.startswith(("SLURM_", "SLURMD_", "SRUN_", "SUBMITIT_")) and k != "SLURM_CONF")
              or k in names}
    try:
        yield
    finally:
        os.environ.update(hidden)


def make_executor(cfg: ExperimentConfig, executor: str, folder: Path, resources: Resources,
                  dependency: str | None = None, always_bind: Iterable[Path] = (),
                  visible_gpus: tuple[int, ...] = (), script_only: bool = False) -> Any:
    """A submitit executor for one job (or array) with `resources`, its container and deps.
    `visible_gpus`: the GPUs a local job gets (CUDA_VISIBLE_DEVICES), from run_local's pool.
    `script_only`: a slurm executor used only to write job scripts (dry run; no sbatch needed)."""
    chosen = backend(executor)
    folder = Path(folder)
    container = ContainerCommand()
    if not chosen.in_process:
        binds = [folder, cfg.experiment_dir, cfg.root, *always_bind]
        for path in (folder, cfg.experiment_dir):  # bind sources must exist
            path.mkdir(parents=True, exist_ok=True)
        container = container_command(cfg, binds, gpus=resources.gpus_per_node > 0)
    return chosen.executor(cfg, folder, resources, container, dependency=dependency,
                           visible_gpus=visible_gpus, script_only=script_only)
