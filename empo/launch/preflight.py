"""Preflight: everything a graph will read or ask for, checked before anything is queued.

Assets (each local path exists; each Hub id is in the cache when jobs run offline), the EPITOME
checkpoints' key layout, the lm-eval tasks and their datasets, the container image, the
backend's own limits (`Backend.preflight`; SLURM: the partition, account, qos, GPU gres, node
count and each stage's time against the partition's MaxTime), and `empo plan`'s memory per
training stage against cluster.gpu_memory_gb. Every problem
is collected; `check_preflight` raises one PreflightError listing them all, one line each naming
the config key and the fix. `--no-preflight` on run/submit skips it.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from empo.config import ExperimentConfig
from empo.data.chat import eligible
from empo.data.ed import load_dialogues, resolve_source
from empo.errors import EmpoError, LaunchError
from empo.evaluate.epitome_layout import CHECKPOINT_FILES, checkpoint_problems
from empo.hub import (Asset, cached_dataset, cached_snapshot, experiment_assets, hf_home, hub_cache,
                      offline)
from empo.launch.backends import backend
from empo.launch.containers import check_container
from empo.launch.resources import job_resources, signal_lead
from empo.stages import preflight_problems, stage_kind

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
    # the stages that read assets (share and aggregate, on CPU, read none)
    reading = {s.kind for s in pending if stage_kind(s.kind).resources != "cpu"}
    problems: list[Problem] = []
    checks: list[tuple[str, Callable[[], list[Problem]]]] = []
    if reading:
        checks.append(("assets", lambda: check_assets(cfg, reading)))
    if pending:
        checks.append(("cluster.container", lambda: check_image(cfg, executor)))
    if pending:  # the backend's own limits (SLURM: partition, account, gres, MaxTime)
        checks.append(("cluster.partition", lambda: backend(executor).preflight(cfg, graph)))
    if backend(executor).requeue_signal and any(stage_kind(s.kind).checkpointable for s in pending):
        checks.append(("cluster.time", lambda: check_signal_lead(cfg, pending)))
    if any(stage_kind(s.kind).preflight for s in pending):
        checks.append(("cluster.gpu_memory_gb", lambda: check_stages(pending)))
    for key, check in checks:
        try:
            problems += check()
        except EmpoError as err:  # a check that cannot run is itself a problem, not a crash
            problems.append(Problem(key, str(err), "fix the value named above"))
    return problems


def check_signal_lead(cfg: ExperimentConfig, pending: Iterable) -> list[Problem]:
    """A checkpointing job's time limit must exceed the lead of its requeue signal plus the
    write of its checkpoint (`resources.signal_lead`): else SLURM signals it before it has
    trained or saved, and it requeues in a loop until it ends FAILED."""
    problems = []
    for kind in dict.fromkeys(s.kind for s in pending if stage_kind(s.kind).checkpointable):
        warn_lost_share(cfg, kind)
        entry = stage_kind(kind)
        key = f"cluster.time.{entry.time_key}"
        resources = job_resources(cfg, entry.job, kind)
        lead, write = (signal_lead(cfg, kind) if entry.resources == "training"
                       else (resources.signal_lead_s, 0.0))
        minutes = resources.timeout_min
        if minutes * 60 < lead + write:
            saving = f" + {write:.0f} s to write its checkpoint" if write >= 1 else ""
            problems.append(Problem(
                key, f"{minutes} min is shorter than the requeue signal's lead ({lead} s"
                f"{saving}): the {kind} job would be signalled before it trains and requeue in "
                "a loop", f"raise {key} above {math.ceil((lead + write) / 60)} min, or lower "
                "cluster.signal_lead_s"))
    return problems


LOST_SHARE = 0.10  # a preemption may lose at most this share of a training stage's steps


def warn_lost_share(cfg: ExperimentConfig, kind: str) -> float | None:
    """Warn (a log line, not a refusal) when `<kind>.save_steps` lets a preemption lose more than
    LOST_SHARE of the stage: the steps since the last checkpoint are redone. Its steps are
    ceil(training dialogues / global_batch_size) × num_train_epochs. Returns the share (None for
    a stage without save_steps, or when the data cannot be read here)."""
    section = getattr(cfg, kind, None)
    if not all(hasattr(section, f) for f in ("save_steps", "global_batch_size", "num_train_epochs")):
        return None
    try:
        dialogues = eligible(load_dialogues(cfg.local_or_name(cfg.data.source),
                                            cfg.data.train_split, cfg.data.revision).dialogues)
    except (EmpoError, OSError):
        return None
    steps = math.ceil(len(dialogues) / section.global_batch_size) * section.num_train_epochs
    share = min(1.0, section.save_steps / steps) if steps else None
    if share is not None and share > LOST_SHARE:
        log.warning("%s.save_steps %d: a preemption loses up to %d of the stage's %d steps "
                    "(%.0f%%, more than %.0f%%); a smaller save_steps loses less", kind,
                    section.save_steps, min(section.save_steps, steps), steps, 100 * share,
                    100 * LOST_SHARE)
    return share


# ----------------------------------------------------------------------------- assets

def check_assets(cfg: ExperimentConfig, kinds: Iterable[str] | None = None) -> list[Problem]:
    """Each asset the stages of `kinds` read (default: every stage of the experiment) resolves:
    local paths exist and have the right shape; Hub ids are cached when jobs run offline;
    EPITOME checkpoints have the published keys; lm-eval tasks resolve."""
    off = offline(cfg)
    cache = hub_cache(cfg)
    problems: list[Problem] = []
    for asset in experiment_assets(cfg, kinds):
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
    problems = []
    for split_key in ("train_split", "eval_split"):
        try:
            resolve_source(path, getattr(cfg.data, split_key))
        except EmpoError as err:
            problems.append(Problem(f"data.{split_key}", str(err),
                                    "name a split the data.source directory has"))
    return problems


def _epitome_problems(asset: Asset) -> list[Problem]:
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
    try:
        check_container(cfg, executor)
    except LaunchError as err:
        text = str(err)
        key = text.split(":", 1)[0] if text.startswith("cluster.") else "cluster.container"
        return [Problem(key, text.split(": ", 1)[-1] if text.startswith("cluster.") else text,
                        "build or pull the image where this node sees it (docker/README.md)")]
    return []


# ----------------------------------------------------------------------------- memory

def check_stages(pending) -> list[Problem]:
    """Each pending stage kind's own checks (its registry `preflight` hook, e.g. `empo plan`'s
    per-GPU memory of a training stage against cluster.gpu_memory_gb), once per variant."""
    problems = []
    seen = set()
    for stage in pending:
        if (stage.kind, stage.variant) in seen:
            continue
        seen.add((stage.kind, stage.variant))
        problems += [Problem(*found) for found in
                     preflight_problems(stage.config, stage.kind, stage.variant)]
    return problems
