"""Preflight: everything a graph will read or ask for, checked before anything is queued.

Assets (each local path exists; each Hub id is in the cache when jobs run offline), the EPITOME
checkpoints' key layout, the lm-eval tasks and their datasets, the container image, and on SLURM
the partition, account, qos, GPU gres, node count and each stage's time against the partition's
MaxTime, and `empo plan`'s memory per training stage against cluster.gpu_memory_gb. Every problem
is collected; `check_preflight` raises one PreflightError listing them all, one line each naming
the config key and the fix. `--no-preflight` on run/submit skips it.
"""
from __future__ import annotations

import getpass
import logging
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from empo.config import ExperimentConfig
from empo.errors import EmpoError, LaunchError
from empo.hub import Asset, cached_dataset, cached_snapshot, experiment_assets, hf_home, \
    hub_cache, offline

log = logging.getLogger(__name__)

FETCH_HINT = "run `empo fetch CONFIG` where the Hub is reachable (same cluster.hf_home)"


@dataclass(frozen=True)
class Problem:
    """One thing that would fail later: the config key, what is wrong, how to fix it."""

    key: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key}: {self.what} — {self.fix}"


class PreflightError(LaunchError):
    """Problems found before queueing; the message lists every one on its own line."""

    def __init__(self, problems: list[Problem], what: str = "nothing was queued"):
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"preflight found {len(problems)} problem(s); {what} "
                         f"(--no-preflight skips these checks):\n{lines}")


def check_preflight(cfg: ExperimentConfig, executor: str, graph=None) -> None:
    """PreflightError listing every problem `preflight` finds."""
    problems = preflight(cfg, executor, graph)
    if problems:
        raise PreflightError(problems)


def preflight(cfg: ExperimentConfig, executor: str, graph=None) -> list[Problem]:
    """Every problem of `cfg` run with `executor` (graph: its stage graph, built when None)."""
    if graph is None:
        from empo.pipeline import build_graph

        graph = build_graph(cfg)
    pending = graph.pending()
    kinds = {stage.kind for stage in pending}
    trains = bool(kinds & {"sft", "dpo"})
    evals = bool(kinds - {"sft", "dpo", "share", "aggregate"})  # share/aggregate read no asset
    problems: list[Problem] = []
    checks: list[tuple[str, Callable[[], list[Problem]]]] = []
    if trains or evals:
        checks.append(("assets", lambda: check_assets(cfg, trains, evals)))
    if pending:
        checks.append(("cluster.container", lambda: check_image(cfg, executor)))
    if pending and executor == "slurm":
        checks.append(("cluster.partition", lambda: check_slurm(cfg, graph)))
    if trains and cfg.cluster.gpus_per_node > 0 and cfg.cluster.gpu_memory_gb > 0:
        checks.append(("cluster.gpu_memory_gb", lambda: check_memory(cfg, pending)))
    for key, check in checks:
        try:
            problems += check()
        except EmpoError as err:  # a check that cannot run is itself a problem, not a crash
            problems.append(Problem(key, str(err), "fix the value named above"))
    return problems


# ----------------------------------------------------------------------------- assets

def check_assets(cfg: ExperimentConfig, trains: bool = True, evals: bool = True) -> list[Problem]:
    """Each asset resolves: local paths exist and have the right shape; Hub ids are cached when
    jobs run offline; EPITOME checkpoints have the published keys; lm-eval tasks resolve."""
    off = offline(cfg)
    cache = hub_cache(cfg)
    problems: list[Problem] = []
    for asset in experiment_assets(cfg, trains=trains):
        if not evals and asset.key.startswith("eval."):
            continue
        problems += _asset_problems(cfg, asset, off, cache)
    return problems


def _asset_problems(cfg: ExperimentConfig, asset: Asset, off: bool, cache: Path) -> list[Problem]:
    key = asset.key
    if asset.kind == "epitome":
        return _epitome_problems(asset)
    if asset.kind == "lm-eval":
        return check_lm_eval(cfg, off)
    if asset.hub:
        if off and cached_snapshot(asset, cache) is None:
            rev = f"@{asset.revision}" if asset.revision else ""
            return [Problem(key, f"Hub {asset.repo_type} {asset.value}{rev} is not in the cache "
                            f"{cache} and jobs run offline", FETCH_HINT + ", or give a local path")]
        return []
    path = asset.path
    if path is None or not path.exists():
        return [Problem(key, f"{path or asset.value!r} does not exist",
                        "give an existing path (relative paths start at the project root)")]
    if asset.kind == "file" and not path.is_file():
        return [Problem(key, f"{path} is not a file", "give a file")]
    if asset.kind == "directory" and not path.is_dir():
        return [Problem(key, f"{path} is not a directory", "give a directory")]
    if asset.kind == "model" and not ((path / "config.json").is_file()
                                      or (path / "tokenizer_config.json").is_file()):
        return [Problem(key, f"{path} is not a model or tokenizer directory (no config.json or "
                        "tokenizer_config.json)", "give a directory saved by save_pretrained")]
    if key == "eval.bertscore.model" and cfg.eval.bertscore.num_layers is None:
        return [Problem("eval.bertscore.num_layers", f"the BERTScore model {path} is a local path "
                        "and bert-score has no default layer for it", "set its layer count")]
    if asset.kind == "dataset":
        return _dataset_problems(cfg, path)
    return []


def _dataset_problems(cfg: ExperimentConfig, path: Path) -> list[Problem]:
    from empo.data.ed import resolve_source

    problems = []
    for split_key in ("train_split", "eval_split"):
        try:
            resolve_source(path, getattr(cfg.data, split_key))
        except EmpoError as err:
            problems.append(Problem(f"data.{split_key}", str(err),
                                    "name a split the data.source directory has"))
    return problems


def _epitome_problems(asset: Asset) -> list[Problem]:
    from empo.evaluate.epitome_layout import CHECKPOINT_FILES, checkpoint_problems

    files = ", ".join(CHECKPOINT_FILES.values())
    if asset.path is None:
        return [Problem(asset.key, "not set: diff-EPITOME needs the classifiers",
                        f"give the directory with {files} (README: 'EPITOME checkpoints'), "
                        "or `train` with eval.epitome.train_data, or drop epitome from "
                        "eval.metrics")]
    return [Problem(asset.key, line, f"put the published {files} there (README: 'EPITOME "
                    "checkpoints'; `empo fetch` checks them)")
            for line in checkpoint_problems(asset.path)]


# ----------------------------------------------------------------------------- lm-eval

_NAME_LINE = re.compile(r"^(task|group|tag):\s*['\"]?([\w.-]+)['\"]?\s*$", re.M)
_DATASET_LINE = re.compile(r"^dataset_path:\s*['\"]?([^\s'\"#]+)", re.M)
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas")


def task_files(roots: list[Path]) -> dict[str, list[Path]]:
    """task/group/tag name -> the YAML files that define it, from a text scan of `roots` (what
    lm-eval's TaskManager indexes, without its seconds of YAML parsing)."""
    names: dict[str, list[Path]] = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*.yaml")):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for _, name in _NAME_LINE.findall(text):
                names.setdefault(name, []).append(path)
    return names


def lm_eval_roots(cfg: ExperimentConfig) -> list[Path]:
    import importlib.util

    roots = [cfg.resolve(cfg.eval.mmlu.include_path)] if cfg.eval.mmlu.include_path else []
    spec = importlib.util.find_spec("lm_eval")
    if spec is not None and spec.origin:
        roots.append(Path(spec.origin).parent / "tasks")
    return roots


def task_datasets(files: list[Path]) -> set[str]:
    """Hub dataset ids the tasks defined in `files` read (their directories' YAMLs)."""
    found: set[str] = set()
    for folder in {f.parent for f in files}:
        for path in folder.rglob("*yaml"):  # templates too (`_default_template_yaml`)
            for name in _DATASET_LINE.findall(path.read_text(errors="replace")):
                if name not in LOCAL_BUILDERS and not name.startswith(("/", ".")):
                    found.add(name)
    return found


def check_lm_eval(cfg: ExperimentConfig, off: bool) -> list[Problem]:
    """Each eval.mmlu task resolves in lm-eval (include_path + its own tasks); offline, the Hub
    datasets those tasks read are cached."""
    roots = lm_eval_roots(cfg)
    if not roots:
        return [Problem("eval.mmlu.tasks", "lm-eval is not installed", "pip install lm-eval")]
    index = task_files(roots)
    problems = [Problem("eval.mmlu.tasks", f"lm-eval knows no task or group {task!r}",
                        "name an lm-eval task, or set eval.mmlu.include_path to the directory "
                        "of its YAML") for task in cfg.eval.mmlu.tasks if task not in index]
    if off:
        home = hf_home(cfg)
        files = [f for task in cfg.eval.mmlu.tasks for f in index.get(task, [])]
        for name in sorted(task_datasets(files)):
            if not cached_dataset(name, home):
                problems.append(Problem("eval.mmlu.tasks", f"lm-eval dataset {name} is not in "
                                        f"the cache {home} and jobs run offline", FETCH_HINT))
    return problems


# ----------------------------------------------------------------------------- image

def check_image(cfg: ExperimentConfig, executor: str) -> list[Problem]:
    from empo.launch.containers import check_container

    try:
        check_container(cfg, executor)
    except LaunchError as err:
        text = str(err)
        key = text.split(":", 1)[0] if text.startswith("cluster.") else "cluster.container"
        return [Problem(key, text.split(": ", 1)[-1] if text.startswith("cluster.") else text,
                        "build or pull the image where this node sees it (docker/README.md)")]
    return []


# ----------------------------------------------------------------------------- SLURM

def _run(argv: list[str]) -> str | None:
    """stdout of a SLURM client command, None when it is missing or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def partition_info(name: str | None) -> dict[str, str] | None:
    """`scontrol show partition NAME` as key -> value (the default partition when None)."""
    if name is None:
        out = _run(["sinfo", "-h", "-o", "%P"])
        default = [p.rstrip("*") for p in (out or "").split() if p.endswith("*")]
        if not default:
            return None
        name = default[0]
    out = _run(["scontrol", "show", "partition", name, "-o"])
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
    out = _run(["sinfo", "-h", "-p", partition, "-o", "%G"]) or ""
    counts = [int(m) for m in re.findall(r"gpu(?::[\w.-]+)?:(\d+)", out)]
    return max(counts, default=0)


def check_slurm(cfg: ExperimentConfig, graph) -> list[Problem]:
    """Partition, account, qos, gres, nodes and walltime against what the cluster reports."""
    from empo.launch.jobs import plan_units
    from empo.launch.resources import job_resources

    cluster = cfg.cluster
    if shutil.which("scontrol") is None:
        return []  # check_launch already refused a machine without sbatch
    listed = _run(["sinfo", "-h", "-o", "%P"])
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
        out = _run(["sacctmgr", "-n", "-P", "show", "associations",
                    f"user={getpass.getuser()}", f"account={cfg.cluster.account}",
                    "format=account"])
        if out is not None and not out.strip():
            problems.append(Problem("cluster.account", f"account {cfg.cluster.account} does not "
                                    f"exist or {getpass.getuser()} is not in it",
                                    "use an account of `sacctmgr show associations user=$USER`"))
    if cfg.cluster.qos:
        out = _run(["sacctmgr", "-n", "-P", "show", "qos", cfg.cluster.qos, "format=name"])
        if out is not None and not out.strip():
            problems.append(Problem("cluster.qos", f"qos {cfg.cluster.qos} does not exist",
                                    "use a qos of `sacctmgr show qos`"))
    return problems


# ----------------------------------------------------------------------------- memory

def check_memory(cfg: ExperimentConfig, pending) -> list[Problem]:
    """`empo plan`'s per-GPU memory of each pending training stage fits cluster.gpu_memory_gb."""
    from empo.train.memory import GIB, RUNTIME_OVERHEAD_GIB, plan_memory

    problems = []
    seen = set()
    for stage in pending:
        if stage.kind not in ("sft", "dpo") or (stage.kind, stage.variant) in seen:
            continue
        seen.add((stage.kind, stage.variant))
        plan = plan_memory(stage.config, stage.kind)
        if not plan.fits:
            need = plan.total / GIB + RUNTIME_OVERHEAD_GIB
            problems.append(Problem(
                "cluster.gpu_memory_gb", f"{stage.kind} ({stage.variant}) needs {need:.1f} GiB per "
                f"GPU (`empo plan`), more than {cfg.cluster.gpu_memory_gb:g}",
                f"lower {stage.kind}.per_device_train_batch_size or {stage.kind}.max_length, use "
                f"{stage.kind}.deepspeed=zero3, or more GPUs (see `empo plan CONFIG`)"))
    return problems
