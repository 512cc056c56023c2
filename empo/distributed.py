"""The torch distributed environment of a training process, built in one place as a dict and
applied only while a training stage runs (`scoped`), so nothing leaks into the process after it.

Three cases: a launcher set it (torchrun, a plain sbatch wrapper); a multi-task submitit or SLURM
job step (submitit's TorchDistributedEnvironment, read without exporting); a lone process: nothing
at all (with WORLD_SIZE=1 set, transformers wraps the model in DDP for one process: slower, and
a find_unused_parameters warning in every log), except under DeepSpeed, which needs a process
group even alone (rank 0 of 1 on a free local port). CUDA_VISIBLE_DEVICES is left alone so each
rank picks cuda:LOCAL_RANK the way accelerate and DeepSpeed expect.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator

from empo.errors import ConfigError

NAMES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def requeue_signal() -> signal.Signals:
    """The signal a job is told to save and requeue with: submitit's (`--signal=USR2@<lead>`;
    SUBMITIT_PREEMPT_SIGNAL changes it), read from submitit; what a training stage saves at and
    what the plain-sbatch wrappers pass on."""
    from submitit import JobEnvironment

    try:
        return signal.Signals["SIG" + JobEnvironment.USR_SIG]
    except KeyError:
        raise ConfigError(f"SUBMITIT_PREEMPT_SIGNAL={JobEnvironment.USR_SIG!r}: not a signal "
                          "name (e.g. USR2)") from None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def distributed_env(process_group: bool = False) -> dict[str, str]:
    """The variables this process trains with (see the module docstring for the three cases);
    `process_group`: a lone process gets rank 0 of 1 too (DeepSpeed), else nothing."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # a launcher's: kept as they are
        return {name: os.environ[name] for name in NAMES if name in os.environ}
    job = _job_env()
    if job is not None:
        return job
    if not process_group:
        return {}
    return {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": os.environ.get("MASTER_PORT") or str(free_port())}


def _job_env() -> dict[str, str] | None:
    """A multi-task submitit job's (or a plain sbatch script's srun step's) variables, or None."""
    executor = os.environ.get("SUBMITIT_EXECUTOR") or (
        "slurm" if "SLURM_STEP_ID" in os.environ else None)
    if executor is None:
        return None
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    with scoped({"SUBMITIT_EXECUTOR": executor}):
        if JobEnvironment().num_tasks <= 1:
            return None
        env = TorchDistributedEnvironment()
    return {"MASTER_ADDR": env.master_addr, "MASTER_PORT": str(env.master_port),
            "RANK": str(env.rank), "WORLD_SIZE": str(env.world_size),
            "LOCAL_RANK": str(env.local_rank), "LOCAL_WORLD_SIZE": str(env.local_world_size)}


def process_rank() -> int:
    """This process's global rank (0 outside a multi-task job), without changing anything."""
    return int(distributed_env().get("RANK", "0"))


@contextlib.contextmanager
def scoped(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """`env` in os.environ for the duration of the block, then exactly as before."""
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
