"""What an experiment reads from disk or the Hugging Face Hub, and where the Hub cache is.

`experiment_assets(cfg)` lists every input of the graph (base model, dataset, EPITOME encoder and
checkpoints, BERTScore model, lm-eval tasks, ...) with the config key that names it; preflight
checks them and `empo fetch` stages them. `offline(cfg)` / `hub_environment(cfg)` decide how jobs
see the Hub (`cluster.offline`, `cluster.hf_home`). No torch and no Hub client at import time.
"""
from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from empo.config import ExperimentConfig
from empo.executors import OFFLINE_BY_DEFAULT
from empo.stages import REGISTRY, experiment_kinds, hook

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Asset:
    """One input of the experiment, named by config key `key`."""

    key: str                       # e.g. model.name_or_path
    kind: str                      # model | dataset | file | directory | epitome | lm-eval
    value: str                     # what the config says
    path: Path | None              # a local path (absolute), None for a Hub id / lm-eval tasks
    revision: str | None = None    # Hub revision (datasets: data.revision)

    @property
    def hub(self) -> bool:
        return self.path is None and self.kind in ("model", "dataset")

    @property
    def repo_type(self) -> str:
        return "dataset" if self.kind == "dataset" else "model"


def offline(cfg: ExperimentConfig) -> bool:
    """Whether jobs run with the Hub offline: cluster.offline, or when None, the slurm executor
    or HF_HUB_OFFLINE=1 in this environment."""
    if cfg.cluster.offline is not None:
        return cfg.cluster.offline
    return cfg.cluster.executor in OFFLINE_BY_DEFAULT or \
        os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


PROBE_TIMEOUT_S = 3.0


def offline_unless_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Decide once, before any Hub client is imported, whether this process can reach the Hub:
    HF_HUB_OFFLINE=1 already says no; else one HEAD request to the endpoint ($HF_ENDPOINT or
    huggingface.co) within `timeout_s`. Unreachable: the offline switches are set for the rest
    of the process, so models, tokenizers and datasets come from the cache at once instead of
    after the clients' retries on every file. Returns whether the process is now offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return True
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s)
    except urllib.error.HTTPError:
        return False  # it answered
    except (OSError, ValueError):
        os.environ.update({name: "1" for name in OFFLINE_VARIABLES})
        return True
    return False


def hf_home(cfg: ExperimentConfig | None = None, cache: str | Path | None = None) -> Path:
    """The Hugging Face cache root: `cache`, cluster.hf_home, $HF_HOME, ~/.cache/huggingface."""
    if cache:
        return Path(cache).expanduser().resolve()
    if cfg is not None and cfg.cluster.hf_home:
        return cfg.resolve(cfg.cluster.hf_home)
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()


def hub_cache(cfg: ExperimentConfig | None = None, cache: str | Path | None = None) -> Path:
    """Where huggingface_hub keeps repositories: HF_HOME/hub (or $HF_HUB_CACHE when nothing
    more specific is configured)."""
    if not cache and (cfg is None or not cfg.cluster.hf_home) and os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return hf_home(cfg, cache) / "hub"


def hub_environment(cfg: ExperimentConfig) -> dict[str, str]:
    """Variables every job gets: HF_HOME when cluster.hf_home is set; the offline switches when
    `offline(cfg)`."""
    env = {"HF_HOME": str(hf_home(cfg))} if cfg.cluster.hf_home else {}
    if offline(cfg):
        env.update({name: "1" for name in OFFLINE_VARIABLES})
    return env


def hub_binds(cfg: ExperimentConfig) -> list[Path]:
    """Directories a container must see for the Hub: the cache, when jobs run offline."""
    home = hf_home(cfg)
    return [home] if offline(cfg) and home.is_dir() else []


def looks_like_hub_id(value: str) -> bool:
    return bool(_HUB_ID.fullmatch(value)) and not value.startswith((".", "~")) \
        and value.count("/") <= 1


def _model_or_dataset(cfg: ExperimentConfig, key: str, kind: str, value: str,
                      revision: str | None = None) -> Asset:
    path = cfg.resolve(value)
    if path.exists() or not looks_like_hub_id(value):
        return Asset(key, kind, value, path)
    return Asset(key, kind, value, None, revision)


def experiment_assets(cfg: ExperimentConfig, kinds: Iterable[str] | None = None) -> list[Asset]:
    """Every input the stages of `kinds` read (default: every stage kind of the experiment): the
    base model, the dataset and its files, then each kind's own (its registry `assets` hook), in
    registry order, each once (first key wins)."""
    chosen = set(experiment_kinds(cfg) if kinds is None else kinds)
    assets = [_model_or_dataset(cfg, "model.name_or_path", "model", cfg.model.name_or_path),
              _model_or_dataset(cfg, "data.source", "dataset", cfg.data.source,
                                getattr(cfg.data, "revision", None))]
    files = [("data.emotion_table", cfg.data.emotion_table)]
    if cfg.model.chat_template:
        files.append(("model.chat_template", cfg.model.chat_template))
    assets += [Asset(key, "file", value, cfg.resolve(value)) for key, value in files]
    for name, entry in REGISTRY.items():
        if name in chosen and entry.assets:
            assets += hook(entry.assets)(cfg, name)
    seen: set[tuple[str, str]] = set()
    unique = []
    for asset in assets:
        ident = (asset.kind, str(asset.path or asset.value))
        if ident not in seen:
            seen.add(ident)
            unique.append(asset)
    return unique


def training_assets(cfg: ExperimentConfig, kind: str) -> list[Asset]:
    """A training stage's DeepSpeed config (`<kind>.deepspeed`: a preset or a JSON path)."""
    name = getattr(cfg, kind).deepspeed
    if not name or name == "none":
        return []
    value = name if name.endswith(".json") else f"empo:deepspeed/{name}.json"
    return [Asset(f"{kind}.deepspeed", "file", value, cfg.resolve(value))]


def epitome_assets(cfg: ExperimentConfig, kind: str) -> list[Asset]:
    """diff-EPITOME: the classifiers (or their training data) and the RoBERTa encoder/tokenizer."""
    epitome = cfg.eval.epitome
    if epitome.checkpoints == "train":
        assets = [Asset("eval.epitome.train_data", "directory", epitome.train_data or "",
                        cfg.resolve(epitome.train_data or ""))]
    else:
        value = epitome.checkpoints or ""
        assets = [Asset("eval.epitome.checkpoints", "epitome", value,
                        cfg.resolve(value) if value else None)]
    return assets + [_model_or_dataset(cfg, "eval.epitome.encoder", "model", epitome.encoder),
                     _model_or_dataset(cfg, "eval.epitome.tokenizer", "model", epitome.tokenizer)]


def bertscore_assets(cfg: ExperimentConfig, kind: str) -> list[Asset]:
    """BERTScore: its model."""
    return [_model_or_dataset(cfg, "eval.bertscore.model", "model", cfg.eval.bertscore.model)]


def mmlu_assets(cfg: ExperimentConfig, kind: str) -> list[Asset]:
    """MMLU: the lm-eval tasks (and the directory of their YAMLs)."""
    mmlu = cfg.eval.mmlu
    assets = []
    if mmlu.include_path:
        assets.append(Asset("eval.mmlu.include_path", "directory", mmlu.include_path,
                            cfg.resolve(mmlu.include_path)))
    return assets + [Asset("eval.mmlu.tasks", "lm-eval", ",".join(mmlu.tasks), None)]


def cached_snapshot(asset: Asset, cache: Path) -> Path | None:
    """The asset's snapshot directory in the Hub cache `cache`, or None when it is not there
    (a model also needs its config.json or, for a tokenizer-only repo, tokenizer_config.json)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        where = Path(snapshot_download(asset.value, repo_type=asset.repo_type,
                                       revision=asset.revision, cache_dir=str(cache),
                                       local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None
    if asset.kind == "model" and not any((where / name).is_file() for name in
                                         ("config.json", "tokenizer_config.json")):
        return None
    return where if where.is_dir() and any(where.iterdir()) else None


def cached_dataset(name: str, cache_root: Path) -> bool:
    """A Hub dataset id (e.g. an lm-eval task's dataset_path) is in the Hub cache or in datasets'
    own prepared cache under `cache_root` (HF_HOME)."""
    hub = cache_root / "hub" / f"datasets--{name.replace('/', '--')}" / "snapshots"
    prepared = cache_root / "datasets" / name.replace("/", "___")
    return (hub.is_dir() and any(hub.iterdir())) or (prepared.is_dir() and any(prepared.iterdir()))
