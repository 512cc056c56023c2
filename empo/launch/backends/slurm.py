"""The SLURM backend: sbatch through submitit's SLURM executor (afterok/aftercorr dependencies,
job arrays, requeue on preemption), its preflight (partition, account, qos, gres, nodes and
walltime against what the cluster reports), states from squeue and sacct, scancel. Its config
fields are `SlurmOptions` (declared in `empo.executors`, below the config layer). submitit is
imported only inside the functions that need it.
"""
from __future__ import annotations

import getpass
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from empo.config import RUNTIMES, ExperimentConfig
from empo.errors import LaunchError
from empo.executors import SlurmOptions
from empo.launch import job_environment
from empo.launch.accounting import JobInfo, run_query, slurm_job_info
from empo.launch.backends import Backend, Entry
from empo.launch.containers import ContainerCommand
from empo.launch.jobs import plan_units
from empo.launch.preflight import Problem
from empo.launch.resources import Resources, job_resources
from empo.launch.status import RUNNING, normalize
from empo.quoting import export_line


class Slurm(Backend):
    name = "slurm"
    job_id = re.compile(r"[0-9]{1,12}(_[0-9]{1,9})?")
    queued = True
    remote = True
    requeue_signal = True
    runtimes = RUNTIMES
    options = SlurmOptions

    def check(self, cfg: ExperimentConfig) -> None:
        if shutil.which("sbatch") is None:
            raise LaunchError("sbatch not found on PATH: the slurm executor (empo submit, "
                              "--executor slurm) runs on a SLURM login node; to run on this "
                              "machine use `empo run CONFIG --executor local`")

    def executor(self, cfg: ExperimentConfig, folder: Path, resources: Resources,
                 container: ContainerCommand, dependency: str | None = None,
                 visible_gpus: tuple[int, ...] = (), script_only: bool = False) -> Any:
        import submitit

        if script_only:
            ex = _script_only_executor(folder, container.python, resources.max_requeues)
        else:
            self.check(cfg)
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
            slurm_signal_delay_s=resources.signal_lead_s,
        )
        if resources.gpus_per_node:
            params["gpus_per_node"] = resources.gpus_per_node
        for key in ("partition", "account", "qos"):
            if getattr(resources, key):
                params[f"slurm_{key}"] = getattr(resources, key)
        env = job_environment(resources)
        if env:
            params["slurm_setup"] = [export_line(env)]  # every value quoted (cluster.hf_home, ...)
        if container.srun_args:
            params["slurm_srun_args"] = list(container.srun_args)
        ex.update_parameters(**params)
        # submitit writes --wckey=submitit unless told None, which AutoExecutor reads as "not set"
        ex._executor.update_parameters(wckey=resources.wckey)
        return ex

    def script(self, executor: Any, count: int) -> str:
        """The sbatch script submitit writes for this executor: one job, or an array of `count`."""
        from submitit.slurm.slurm import _make_sbatch_string

        inner = executor._executor
        params = dict(inner.parameters)
        if count > 1:
            params["map_count"] = count
        return _make_sbatch_string(command=inner._submitit_command_str, folder=inner.folder,
                                   **params)

    def preflight(self, cfg: ExperimentConfig, graph: Any) -> list[Problem]:
        return check_slurm(cfg, graph)

    def describe(self, entries: list[Entry], experiment_dir: Path) -> dict[str, str]:
        return slurm_states(sorted({str(entry["job_id"]) for entry in entries}))

    def job_info(self, entries: list[Entry], states: dict[str, str]) -> dict[str, JobInfo]:
        return slurm_job_info(sorted({str(entry["job_id"]) for entry in entries}))

    def cancel(self, entries: list[Entry], live: set[str], experiment_dir: Path,
               grace_s: float) -> list[str]:
        """scancel, then wait until accounting shows them ended (at least 30 s)."""
        left = sorted(live & {str(entry["job_id"]) for entry in entries})
        if not left:
            return []
        done = subprocess.run(["scancel", "--", *left], capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0:
            raise LaunchError(f"scancel {' '.join(left)} failed: {done.stderr.strip()}")
        deadline = time.time() + max(grace_s, 30.0)
        while left and time.time() < deadline:
            states = slurm_states(left)
            left = [j for j in left if normalize(states.get(j)) in RUNNING | {"PENDING", "REQUEUED"}]
            if left:
                time.sleep(1.0)
        return left


def _script_only_executor(folder: Path, python: str | None, max_requeues: int) -> Any:
    """An AutoExecutor whose slurm executor only renders job scripts (the dry run): submitit's
    own parameter translation and script writer, without its check that `srun` is on PATH, so
    scripts are written on a laptop or a login node without SLURM. It never submits."""
    import submitit

    class ScriptOnlySlurmExecutor(submitit.SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 1

        def _internal_process_submissions(self, delayed_submissions: Any) -> Any:
            raise LaunchError("a dry-run executor does not submit jobs")

    ex = submitit.AutoExecutor(folder, cluster="debug")
    ex.cluster = "slurm"
    ex._executor = ScriptOnlySlurmExecutor(folder, python=python, max_num_timeout=max_requeues)
    return ex


# ----------------------------------------------------------------------------- preflight

def partition_info(name: str | None) -> dict[str, str] | None:
    """`scontrol show partition NAME` as key -> value (the default partition when None)."""
    if name is None:
        out = run_query(["sinfo", "-h", "-o", "%P"])
        default = [p.rstrip("*") for p in (out or "").split() if p.endswith("*")]
        if not default:
            return None
        name = default[0]
    out = run_query(["scontrol", "show", "partition", name, "-o"])
    if not out or not out.strip():
        return None
    info = dict(re.findall(r"(\w+)=(\S*)", out))
    info.setdefault("PartitionName", name)
    return info


def minutes(limit: str) -> float | None:
    """SLURM time (D-HH:MM:SS, HH:MM:SS, MM:SS, MM) in minutes; None for UNLIMITED/INFINITE."""
    if not limit or limit.upper() in ("UNLIMITED", "INFINITE", "NONE"):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        h, m, s = (parts + [0, 0])[:3]
    else:  # MM, MM:SS, HH:MM:SS
        h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) == 3 else \
            (0, parts[0], parts[1] if len(parts) > 1 else 0)
    return (int(days or 0) * 24 + h) * 60 + m + s / 60


def gres_gpus(partition: str) -> int:
    """The most GPUs a node of `partition` has (sinfo %G, e.g. gpu:a100:2(S:0-1))."""
    out = run_query(["sinfo", "-h", "-p", partition, "-o", "%G"]) or ""
    counts = [int(m) for m in re.findall(r"gpu(?::[\w.-]+)?:(\d+)", out)]
    return max(counts, default=0)


def check_slurm(cfg: ExperimentConfig, graph) -> list[Problem]:
    """Partition, account, qos, gres, nodes and walltime against what the cluster reports."""
    cluster = cfg.cluster
    if shutil.which("scontrol") is None:
        return []  # check_launch already refused a machine without sbatch
    listed = run_query(["sinfo", "-h", "-o", "%P"])
    if listed is None:
        return [Problem("cluster.executor", "slurm, but SLURM does not answer (sinfo failed)",
                        "submit from a login node of the cluster (SLURM_CONF set), or use "
                        "--executor local")]
    problems: list[Problem] = []
    kinds = sorted({unit.kind for unit in plan_units(graph)})
    by_partition: dict[str | None, list] = {}
    for kind in kinds:
        res = job_resources(cfg, kind, kind)
        by_partition.setdefault(res.partition, []).append((kind, res))
    for name, jobs in by_partition.items():
        key = "cluster.partition" if name == cluster.partition else "cluster.cpu_partition"
        info = partition_info(name)
        if info is None:
            problems.append(Problem(key, f"partition {name or '(default)'} does not exist",
                                    "use one of: " + ", ".join(p.rstrip("*") for p in
                                                               listed.split())))
            continue
        part = info["PartitionName"]
        if info.get("State", "UP") != "UP":
            problems.append(Problem(key, f"partition {part} is {info['State']}",
                                    "use a partition that is UP"))
        limit = minutes(info.get("MaxTime", "UNLIMITED"))
        for kind, res in jobs:
            if limit is not None and res.timeout_min > limit:
                problems.append(Problem("cluster.time", f"{res.timeout_min} min "
                                        f"for {kind} jobs exceeds partition {part}'s MaxTime "
                                        f"{info['MaxTime']} ({limit:.0f} min)",
                                        f"at most {limit:.0f} (training resumes when requeued)"))
        total = int(info.get("TotalNodes", "0") or 0)
        nodes = max(r.nodes for _, r in jobs)
        if total and nodes > total:
            problems.append(Problem("cluster.nodes", f"{nodes} nodes asked, partition {part} has "
                                    f"{total}", f"at most {total}"))
        gpus = max(r.gpus_per_node for _, r in jobs)
        if gpus:
            have = gres_gpus(part)
            if have < gpus:
                problems.append(Problem("cluster.gpus_per_node", f"{gpus} GPUs per node asked, "
                                        f"nodes of partition {part} have {have} (gres/gpu)",
                                        f"at most {have}, or a GPU partition"))
    problems += _accounting(cfg)
    return problems


def _accounting(cfg: ExperimentConfig) -> list[Problem]:
    """account and qos exist (sacctmgr, where accounting answers)."""
    problems = []
    if cfg.cluster.account:
        out = run_query(["sacctmgr", "-n", "-P", "show", "associations",
                    f"user={getpass.getuser()}", f"account={cfg.cluster.account}",
                    "format=account"])
        if out is not None and not out.strip():
            problems.append(Problem("cluster.account", f"account {cfg.cluster.account} does not "
                                    f"exist or {getpass.getuser()} is not in it",
                                    "use an account of `sacctmgr show associations user=$USER`"))
    if cfg.cluster.qos:
        out = run_query(["sacctmgr", "-n", "-P", "show", "qos", cfg.cluster.qos, "format=name"])
        if out is not None and not out.strip():
            problems.append(Problem("cluster.qos", f"qos {cfg.cluster.qos} does not exist",
                                    "use a qos of `sacctmgr show qos`"))
    return problems


# ----------------------------------------------------------------------------- job states

def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state of each job id (array tasks included): squeue for the jobs still in the queue
    (what it says is current), sacct for the ones that left it; UNKNOWN where neither answers
    (no accounting). SLURM's own commands, not submitit's internals."""
    states = squeue_states(job_ids)
    ended = [job_id for job_id in job_ids if job_id not in states]
    if ended:
        info = slurm_job_info(ended)
        states.update({job_id: info[job_id].state if job_id in info else "UNKNOWN"
                       for job_id in ended})
    return states


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: state} of those `job_ids` squeue still lists ({} where squeue cannot answer:
    every id has left the queue, or the controller is down: `accounting.run_query`)."""
    out = run_query(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)])
    listed = dict(line.split()[:2] for line in (out or "").splitlines() if len(line.split()) >= 2)
    return {job_id: listed[job_id] for job_id in job_ids if job_id in listed}


BACKEND = Slurm()

__all__ = ["BACKEND", "Slurm", "SlurmOptions", "slurm_states", "squeue_states"]
