"""What one job asks for, from `cfg.cluster` (and its profile in configs/cluster/*.yaml).

Training jobs (sft, dpo, ...) take `nodes` nodes with one task per GPU (`gpus_per_node` tasks; one
task on CPU nodes); evaluation jobs one task with one GPU (where the nodes have GPUs); the
baseline share and the aggregate one CPU task, on `cluster.cpu_partition` when set. Memory is per
node (eval jobs ask for their GPU's share of it, so two evals can share a node). Walltime comes
from `cluster.time[<stage>]`. Site options (wckey, mail) go to every job; `cluster.slurm_extra`
passes any other sbatch option through.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from empo.config import ClusterConfig, ExperimentConfig
from empo.errors import EmpoError
from empo.hub import hub_environment
from empo.stages import REGISTRY, job_kinds, memory_plan
from empo.train.memory import SUBMITIT_SIGNAL_LEAD_S, checkpoint_plan

DEFAULT_MINUTES = ClusterConfig().time


def _job_entry(kind: str):
    """The registry entry that names a job kind's resources and time key (`empo.stages`)."""
    for entry in REGISTRY.values():
        if entry.job == kind:
            return entry
    raise ValueError(f"unknown job kind {kind!r}; allowed: {', '.join(job_kinds())}")


@dataclass(frozen=True)
class Resources:
    """One job's request, executor-neutral (submitit's generic names)."""

    name: str
    timeout_min: int
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: int = 8
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    max_requeues: int = 3
    wckey: str | None = None                              # None: no --wckey at all
    extra: dict[str, Any] = field(default_factory=dict)   # mail, then cluster.slurm_extra
    env: dict[str, str] = field(default_factory=dict)     # set in the job (Hub cache, offline)
    signal_lead_s: int = 90                               # --signal=USR2@<lead> (requeue)

    def sbatch_options(self) -> list[str]:
        """The request as sbatch command-line options (jobs/submit-all.sh; what submitit writes
        as #SBATCH lines for the launcher), extra options last."""
        options = [f"--job-name={self.name}", f"--time={self.timeout_min}",
                   f"--nodes={self.nodes}", f"--ntasks-per-node={self.tasks_per_node}",
                   f"--cpus-per-task={self.cpus_per_task}", f"--mem={self.mem_gb}G",
                   f"--gpus-per-node={self.gpus_per_node}"]
        for key in ("partition", "account", "qos", "wckey"):
            if getattr(self, key):
                options.append(f"--{key}={getattr(self, key)}")
        for key, value in self.extra.items():
            if value is True:
                options.append(f"--{key}")
            elif value not in (None, False):
                options.append(f"--{key}={value}")
        return options


def job_resources(cfg: ExperimentConfig, kind: str, name: str,
                  plan_signal: bool = False) -> Resources:
    """The request of a job of `kind` (sft, dpo, eval, share, aggregate). `plan_signal`: a
    training job's signal lead may be derived from its checkpoint plan (`signal_lead`: imports
    torch; what `empo submit` does), else it is cluster.signal_lead_s or submitit's 90 s."""
    cluster = cfg.cluster
    entry = _job_entry(kind)
    time_key = entry.time_key
    minutes = int(cluster.time.get(time_key, DEFAULT_MINUTES.get(time_key, 60)))
    mail = {"mail-user": cluster.mail_user, "mail-type": cluster.mail_type}
    common = dict(name=name, timeout_min=minutes, cpus_per_task=cluster.cpus_per_task,
                  mem_gb=cluster.mem_gb, partition=cluster.partition, account=cluster.account,
                  qos=cluster.qos, max_requeues=cluster.max_requeues, wckey=cluster.wckey,
                  extra={**{k: v for k, v in mail.items() if v}, **cluster.slurm_extra},
                  env=hub_environment(cfg))
    if entry.resources == "training":
        gpus = cluster.gpus_per_node
        return Resources(nodes=cluster.nodes, tasks_per_node=max(1, gpus), gpus_per_node=gpus,
                         signal_lead_s=signal_lead(cfg, kind, plan_signal)[0], **common)
    if entry.resources == "eval":  # one GPU of a node: its share of the node's memory
        share = cluster.mem_gb // cluster.gpus_per_node if cluster.gpus_per_node > 1 else cluster.mem_gb
        return Resources(gpus_per_node=min(1, cluster.gpus_per_node),
                         **{**common, "mem_gb": max(1, share)})
    return Resources(**{**common, "cpus_per_task": 1, "mem_gb": min(cluster.mem_gb, 4),
                        "partition": cluster.cpu_partition or cluster.partition})


_LEADS: dict[tuple[Any, ...], tuple[int, float]] = {}


def signal_lead(cfg: ExperimentConfig, kind: str, plan: bool = True) -> tuple[int, float]:
    """(seconds before the time limit a training job of `kind` is signalled to requeue, seconds
    its checkpoint takes to write): with `plan` on GPU nodes, from `empo plan`'s checkpoint
    (`train.memory.checkpoint_plan`: cluster.signal_lead_s, or derived from the write); else
    (CPU nodes: no plan) cluster.signal_lead_s or submitit's 90 s, and no write time. Memoised
    per config: the plan imports torch."""
    cluster = cfg.cluster
    if cluster.gpus_per_node <= 0 or not plan:
        return cluster.signal_lead_s or SUBMITIT_SIGNAL_LEAD_S, 0.0
    key = (cfg.config_hash(), kind, cluster.checkpoint_gb_per_s, cluster.signal_lead_s)
    if key not in _LEADS:
        try:
            plan = checkpoint_plan(cfg, memory_plan(cfg, kind))
        except (EmpoError, OSError):  # no plan here (preflight names why): submitit's lead
            return cluster.signal_lead_s or SUBMITIT_SIGNAL_LEAD_S, 0.0
        _LEADS[key] = (plan.lead_s, plan.write_s)
    return _LEADS[key]
