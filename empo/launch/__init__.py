"""Where stages run: one thin facade over submitit's executors and the container runtimes.

`local` (submitit's LocalExecutor: a process per job on this machine), `debug` (in this process,
for pdb) and `slurm` (sbatch; afterok/aftercorr dependencies, job arrays, requeue on preemption).
Everything is validated before the first job starts: an unknown executor or runtime, a missing
image, no `sbatch` on PATH are LaunchErrors naming what is allowed. No torch is imported here.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from empo.config import RUNTIMES, ExperimentConfig
from empo.errors import LaunchError
from empo.executors import EXECUTORS
from empo.launch.containers import check_container, container_command
from empo.launch.resources import Resources, job_resources

__all__ = ["EXECUTORS", "RUNTIMES", "Resources", "check_executor", "check_launch",
           "clean_submission_env", "job_environment", "job_resources", "make_executor"]


def check_executor(name: str) -> str:
    """The executor name, or LaunchError listing the allowed ones."""
    if name not in EXECUTORS:
        raise LaunchError(f"unknown executor {name!r}; allowed: {', '.join(EXECUTORS)}")
    return name


def check_launch(cfg: ExperimentConfig, executor: str) -> None:
    """Everything that can be checked before submitting anything."""
    check_executor(executor)
    check_container(cfg, executor)
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise LaunchError("sbatch not found on PATH: the slurm executor (empo submit, "
                          "--executor slurm) runs on a SLURM login node; to run on this machine "
                          "use `empo run CONFIG --executor local`")


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
    import submitit

    check_executor(executor)
    folder = Path(folder)
    if executor == "debug":
        ex = submitit.AutoExecutor(folder, cluster="debug")
        ex.update_parameters(name=resources.name, timeout_min=resources.timeout_min)
        return ex
    binds = [folder, cfg.experiment_dir, cfg.root, *always_bind]
    for path in (folder, cfg.experiment_dir):  # bind sources must exist
        path.mkdir(parents=True, exist_ok=True)
    container = container_command(cfg, binds, gpus=resources.gpus_per_node > 0)
    if executor == "local":  # (thread counts: see job_environment, set at submission)
        ex = submitit.LocalExecutor(folder, python=container.python,
                                    max_num_timeout=resources.max_requeues)
        ex.update_parameters(timeout_min=resources.timeout_min,
                             tasks_per_node=resources.tasks_per_node,
                             gpus_per_node=resources.gpus_per_node, visible_gpus=visible_gpus)
        return ex
    if shutil.which("sbatch") is None and not script_only:
        raise LaunchError("sbatch not found on PATH: the slurm executor needs a SLURM login node")
    ex = submitit.AutoExecutor(folder, cluster="slurm", slurm_python=container.python,
                               slurm_max_num_timeout=resources.max_requeues)
    extra: dict[str, Any] = {"requeue": True, **resources.extra}  # preempted jobs come back
    if dependency:
        extra["dependency"] = dependency
        extra.setdefault("kill-on-invalid-dep", "yes")  # a failed dependency cancels its users
    params: dict[str, Any] = dict(
        name=resources.name, timeout_min=resources.timeout_min, nodes=resources.nodes,
        tasks_per_node=resources.tasks_per_node, cpus_per_task=resources.cpus_per_task,
        mem_gb=resources.mem_gb, slurm_additional_parameters=extra,
    )
    if resources.gpus_per_node:
        params["gpus_per_node"] = resources.gpus_per_node
    for key in ("partition", "account", "qos"):
        if getattr(resources, key):
            params[f"slurm_{key}"] = getattr(resources, key)
    env = job_environment(resources)
    if env:
        params["slurm_setup"] = ["export " + " ".join(f"{k}={v}" for k, v in env.items())]
    if container.srun_args:
        params["slurm_srun_args"] = list(container.srun_args)
    ex.update_parameters(**params)
    # submitit writes --wckey=submitit unless told None, which AutoExecutor reads as "not set"
    ex._executor.update_parameters(wckey=resources.wckey)
    return ex
