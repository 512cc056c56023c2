"""`empo fetch`: stage everything an experiment reads into the Hugging Face cache, on a machine
that reaches the Hub (a login node), for compute nodes that do not.

Hub models (base model + tokenizer, EPITOME encoder/tokenizer, BERTScore model) and the dataset
(at data.revision) go through huggingface_hub's `snapshot_download` (resumable, idempotent,
progress bars); the dataset is also prepared by `datasets` and the lm-eval tasks are loaded by
lm-eval's own TaskManager, so their caches are exactly what the offline jobs read. Local paths
are only checked; the EPITOME checkpoints are checked for the published key layout and their
sha256 recorded. The table (asset, size, where, state) is printed and written to
HF_HOME/empo-fetch/<name>.json.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from empo.config import ExperimentConfig
from empo.evaluate.epitome_layout import CHECKPOINT_FILES, checkpoint_problems, sha256
from empo.hub import Asset, experiment_assets, hf_home, hub_cache

# weights of other frameworks in model repos: never read by EmPO
IGNORE_PATTERNS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.tflite", "*.mlmodel", "onnx/*",
                   "coreml/*", "flax_model*", "tf_model*", "rust_model*"]


@dataclass
class Row:
    """One line of the fetch table."""

    key: str
    asset: str
    size: int | None
    where: str
    state: str                     # cached | downloaded | local | missing | failed | invalid
    how: str = ""                  # for a missing asset: how to get it
    sha256: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.state in ("cached", "downloaded", "local")


def size_of(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def fetch(cfg: ExperimentConfig, cache: str | Path | None = None) -> tuple[list[Row], Path]:
    """Fetch/check every asset of `cfg` into `cache` (default: cluster.hf_home, HF_HOME)."""
    home = hf_home(cfg, cache)
    home.mkdir(parents=True, exist_ok=True)
    # datasets and lm-eval read these at import: set them before either is imported
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_DATASETS_CACHE"] = str(home / "datasets")
    if not cache and not cfg.cluster.hf_home and os.environ.get("HF_HUB_CACHE"):
        hub = hub_cache(cfg)
    else:
        hub = home / "hub"
        os.environ["HF_HUB_CACHE"] = str(hub)
    rows = []
    for asset in experiment_assets(cfg):
        if asset.kind == "lm-eval":
            rows.append(_lm_eval(cfg, asset))
        elif asset.kind == "epitome":
            rows.append(_epitome(asset))
        elif asset.hub:
            rows.append(_hub(asset, hub, home))
        else:
            rows.append(_local(asset))
    record = home / "empo-fetch" / f"{cfg.name}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return rows, record


def _local(asset: Asset) -> Row:
    path = asset.path
    if path is None or not path.exists():
        return Row(asset.key, asset.value, None, str(path or "-"), "missing",
                   "a local path: copy it to this path (relative paths start at the project root)")
    return Row(asset.key, asset.value, size_of(path), str(path), "local")


def _hub(asset: Asset, hub: Path, home: Path) -> Row:
    from huggingface_hub import snapshot_download

    label = asset.value + (f"@{asset.revision}" if asset.revision else "")
    try:
        try:
            where = Path(snapshot_download(asset.value, repo_type=asset.repo_type,
                                           revision=asset.revision, cache_dir=str(hub),
                                           local_files_only=True))
            state = "cached"
        except Exception:  # noqa: BLE001 - not (completely) cached: download, resuming parts
            where = Path(snapshot_download(asset.value, repo_type=asset.repo_type,
                                           revision=asset.revision, cache_dir=str(hub),
                                           ignore_patterns=IGNORE_PATTERNS))
            state = "downloaded"
        if asset.kind == "dataset":
            _prepare_dataset(asset, home)
    except Exception as err:  # noqa: BLE001 - network, auth, unknown id: reported in the table
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        return Row(asset.key, label, None, str(hub), "failed",
                   f"{reason}; check the id and the network (HF_ENDPOINT for a mirror, `hf auth "
                   f"login` for gated repos), or download it elsewhere and copy {home}")
    return Row(asset.key, label, size_of(where), str(where), state)


def _prepare_dataset(asset: Asset, home: Path) -> None:
    """datasets' own cache (what load_dataset reads offline), from the downloaded snapshot."""
    import datasets

    datasets.load_dataset(asset.value, revision=asset.revision, cache_dir=str(home / "datasets"))


def _epitome(asset: Asset) -> Row:
    how = ("the published finetuned_{ER,EX,IP}.pth of Lee et al. 2022 (linked from the README of "
           "github.com/passing2961/EmpGPT-3, a Google Drive folder; download by hand; README: "
           "'EPITOME checkpoints'), or eval.epitome.checkpoints: train")
    if asset.path is None:
        return Row(asset.key, "(not set)", None, "-", "missing", how)
    problems = checkpoint_problems(asset.path)
    sums = {name: sha256(asset.path / name) for name in CHECKPOINT_FILES.values()
            if (asset.path / name).is_file()}
    if problems:
        state = "missing" if not sums else "invalid"
        return Row(asset.key, asset.value, None, str(asset.path), state,
                   "; ".join(problems) + f"; need {how}", sums or None)
    return Row(asset.key, asset.value, sum(size_of(asset.path / n) for n in sums),
               str(asset.path), "local", sha256=sums)


def _lm_eval(cfg: ExperimentConfig, asset: Asset) -> Row:
    """lm-eval's TaskManager loads the tasks (and with them their datasets) into the cache."""
    tasks = list(cfg.eval.mmlu.tasks)
    include = str(cfg.resolve(cfg.eval.mmlu.include_path)) if cfg.eval.mmlu.include_path else None
    before = size_of(Path(os.environ["HF_DATASETS_CACHE"]))
    try:
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=include, include_defaults=False) if include else None
        if manager is None or not all(t in manager.all_tasks for t in tasks):
            manager = TaskManager(include_path=include)  # lm-eval's own tasks: seconds to index
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            return Row(asset.key, asset.value, None, "-", "missing",
                       f"lm-eval knows no task {', '.join(unknown)}; set eval.mmlu.include_path")
        manager.load_task_or_group(tasks)
    except Exception as err:  # noqa: BLE001 - a dataset that cannot be downloaded
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        return Row(asset.key, asset.value, None, os.environ["HF_DATASETS_CACHE"], "failed",
                   f"{reason}; rerun where the Hub is reachable")
    grown = size_of(Path(os.environ["HF_DATASETS_CACHE"])) - before
    return Row(asset.key, asset.value, max(grown, 0), os.environ["HF_DATASETS_CACHE"],
               "downloaded" if grown > 0 else "cached")
