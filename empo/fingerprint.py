"""Stage identity: the config fields a stage's output depends on, with models and data named by
their content, hashed with the identities of the stages it reads (DESIGN §2, §5).

A path-valued field (model, dataset, emotion table, EPITOME/BERTScore models, lm-eval tasks)
counts by what is there, not by how it is spelled: a local directory or file is hashed (every
file under 64 MiB in full; larger ones by size and the SHA-256 of their first and last MiB, which
covers weight files without reading gigabytes); a Hub id counts as its cached snapshot when the
Hugging Face cache holds one (so `org/model` and a local copy of the same files are one identity),
else as `hub:<id>`. Standard library only (called by the launcher on a login node).
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from empo.config import ExperimentConfig

FULL_HASH_LIMIT = 64 << 20
SAMPLE = 1 << 20
# Fields whose value names a model, dataset or file: identity by content.
CONTENT_KEYS = ("model.name_or_path", "model.chat_template", "data.source", "data.emotion_table",
                "eval.epitome.checkpoints", "eval.epitome.encoder", "eval.epitome.tokenizer",
                "eval.epitome.train_data", "eval.bertscore.model", "eval.mmlu.include_path")
SKIP_NAMES = (".empo-owned", "COMPLETE")  # markers of the project's own, not content


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def selected(flat: dict[str, Any], include: tuple[str, ...], ignore: tuple[str, ...]
             ) -> dict[str, Any]:
    """The fields under the `include` prefixes, without those under the `ignore` prefixes."""
    def under(key: str, prefixes: tuple[str, ...]) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    return {k: v for k, v in sorted(flat.items()) if under(k, include) and not under(k, ignore)}


def identity_fields(cfg: ExperimentConfig, include: tuple[str, ...], ignore: tuple[str, ...],
                    memo: dict[str, str] | None = None) -> dict[str, Any]:
    """The selected fields of `cfg`, path-valued ones replaced by their content identity
    (`memo`: identities already computed in this pass, by resolved path)."""
    memo = {} if memo is None else memo
    fields = selected(flatten(cfg.to_dict()), include, ignore)
    for key in CONTENT_KEYS:
        value = fields.get(key)
        if isinstance(value, str) and value not in ("", "train"):
            where = str(cfg.resolve(value))
            if where not in memo:
                memo[where] = content_identity(value, cfg)
            fields[key] = memo[where]
    return fields


def fingerprint(kind: str, fields: dict[str, Any], deps: dict[str, str]) -> str:
    """16 hex digits over the stage kind, its fields and the fingerprints of what it reads."""
    blob = json.dumps({"kind": kind, "fields": fields, "deps": deps}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def content_identity(value: str, cfg: ExperimentConfig) -> str:
    """`sha256:<digest>` of a local file/directory (or of a Hub id's cached snapshot), else
    `hub:<value>`."""
    path = cfg.resolve(value)
    if path.exists():
        return _tree_digest(str(path.resolve()))
    snapshot = _cached_snapshot(value)
    return _tree_digest(snapshot) if snapshot else f"hub:{value}"


def _cached_snapshot(repo_id: str) -> str | None:
    """The local snapshot directory of a Hub repo in the HF cache, if there is one."""
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    for repo_type in ("model", "dataset"):
        try:
            return snapshot_download(repo_id, repo_type=repo_type, local_files_only=True)
        except Exception:  # noqa: BLE001 - not cached (or not a valid id): no snapshot
            continue
    return None


def _tree_digest(root: str) -> str:
    base = Path(root)
    files = [base] if base.is_file() else sorted(
        p for p in base.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(base).parts) and p.name not in SKIP_NAMES)
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        rel = "." if path == base else str(path.relative_to(base))
        digest.update(f"{rel}\0{_file_digest(str(path), stat.st_size, stat.st_mtime_ns)}\0".encode())
    return "sha256:" + digest.hexdigest()[:32]


@lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """A file's content digest (cached per size and mtime within a process)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(handle.read(SAMPLE))
            handle.seek(size - SAMPLE, os.SEEK_SET)
            digest.update(handle.read(SAMPLE))
    return f"{size}:{digest.hexdigest()}"
