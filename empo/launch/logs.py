"""`empo logs RESULTS_DIR STAGE [--err] [-f]`: the log of a stage's current (last) job, named by
the manifest; `-f` follows it while the job is pending or running. Logs are read as text only,
through the bounded reader (regular files inside the experiment directory, the last MiB).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from empo.errors import LaunchError
from empo.launch.backends import backend
from empo.pipeline import Graph
from empo.reader import LOG_LIMIT, inside, open_regular


def find_stage(graph: Graph, name: str) -> str:
    """The stage key `name` names: a key (`sft/sft/seed-1`, `aggregate`) or the start of exactly
    one; LaunchError listing the keys otherwise."""
    if name in graph.stages:
        return name
    matches = [key for key in graph.stages if key.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(matches or list(graph.stages))
    what = "names several stages" if matches else "is not a stage of this experiment"
    raise LaunchError(f"{name!r} {what}; stages: {listed}")


def log_path(graph: Graph, manifest: dict[str, Any], key: str, err: bool) -> tuple[Path, dict]:
    """(the stage's stdout or stderr log, its manifest entry); LaunchError when no job ran it."""
    entry = manifest.get("jobs", {}).get(key)
    if not entry:
        stage = graph.stages[key]
        why = "it is done (run before the manifest recorded jobs)" if stage.is_done() else \
            "it was never submitted"
        raise LaunchError(f"{key}: no job in {graph.experiment_dir / 'manifest.json'}: {why}")
    path = backend(entry["executor"]).logs(entry, err)
    if path is None:
        raise LaunchError(f"{key}: job {entry['job_id']} has no {'stderr' if err else 'stdout'} log "
                          "recorded")
    if not inside(path, graph.experiment_dir):
        raise LaunchError(f"{key}: the manifest names the log {path}, outside "
                          f"{graph.experiment_dir}; only logs inside the experiment are shown")
    return path, entry


def _live(entry: dict[str, Any], experiment_dir: Path) -> bool:
    from empo.launch.status import LIVE, job_states, normalize

    return normalize(job_states({"x": entry}, experiment_dir).get(entry["job_id"])) in LIVE


def _read_from(path: Path, position: int) -> tuple[bytes, int]:
    """(what the log holds after `position`, at most LOG_LIMIT bytes: the newest; the position
    after it); a log that is not a regular file (a FIFO, /dev/zero) is refused without blocking
    (ReadError)."""
    with os.fdopen(open_regular(path, follow=False), "rb") as handle:
        start = max(position, os.fstat(handle.fileno()).st_size - LOG_LIMIT)
        handle.seek(start)
        chunk = handle.read(LOG_LIMIT)
    return chunk, start + len(chunk)


def show_log(graph: Graph, manifest: dict[str, Any], name: str, err: bool = False,
             follow: bool = False, out: IO[str] | None = None, poll_s: float = 1.0,
             timeout_s: float | None = None) -> Path:
    """Write the stage's log to `out` (stdout); with `follow`, keep writing what is appended
    until its job has ended (or Ctrl-C / `timeout_s`)."""
    out = out or sys.stdout
    key = find_stage(graph, name)
    path, entry = log_path(graph, manifest, key, err)
    def live() -> bool:
        return _live(entry, graph.experiment_dir)

    if not path.exists() and not (follow and live()):
        raise LaunchError(f"{key}: {path} does not exist (job {entry['job_id']} has not started "
                          "writing it yet, or its folder was removed)")
    start = time.monotonic()
    position = 0
    while True:
        if os.path.lexists(path):
            chunk, position = _read_from(path, position)
            if chunk:
                out.write(chunk.decode("utf-8", errors="replace"))
                out.flush()
        if not follow:
            return path
        if not live():
            time.sleep(poll_s)  # what the job wrote while ending
            if path.exists() and path.stat().st_size > position:
                continue
            return path
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return path
        time.sleep(poll_s)
