"""The run store (DESIGN §5): paths, atomic writes, stage markers and metrics merging."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from empo.errors import EmpoError

VARIANTS = ("baseline", "sft", "sft_dpo")


def run_dir(experiment_dir: Path, variant: str, seed: int) -> Path:
    """results/<experiment>/runs/<variant>/seed-<s>/"""
    return Path(experiment_dir) / "runs" / variant / f"seed-{seed}"


def marker(directory: Path, stage: str = "") -> Path:
    """`DONE` for a run's training stage, `DONE.<stage>` for the others (generate, epitome, ...)."""
    return Path(directory) / (f"DONE.{stage}" if stage else "DONE")


def is_done(directory: Path, stage: str = "") -> bool:
    return marker(directory, stage).exists()


def mark_done(directory: Path, stage: str = "") -> None:
    atomic_write_text(marker(directory, stage), "")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, else remove it."""
    path = Path(path)
    if not path.parent.is_dir():
        raise EmpoError(f"{path}: output directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are shared on a cluster
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON lines atomically; returns the number of rows."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing), for read-modify-write."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def merge_metrics(path: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Merge `metrics` into the JSON file at `path` (other keys kept), atomically and locked."""
    path = Path(path)
    if not path.parent.is_dir():
        raise EmpoError(f"{path}: output directory {path.parent} does not exist")
    with file_lock(path.with_name(f".{path.name}.lock")):
        current: dict[str, Any] = {}
        if path.exists():
            try:
                current = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise EmpoError(f"{path}: existing metrics are not valid JSON ({err})") from None
        current.update(metrics)
        atomic_write_json(path, current)
    return current
