"""`empo logs RESULTS_DIR STAGE [--err] [-f]`: the log of a stage's current (last) job, named by
the manifest; `-f` follows it while the job is pending or running. Logs are read as text only.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Any

from empo.errors import LaunchError
from empo.pipeline import Graph


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
    path = entry.get("stderr" if err else "stdout")
    if not path:
        raise LaunchError(f"{key}: job {entry['job_id']} has no {'stderr' if err else 'stdout'} log "
                          "recorded")
    return Path(path), entry


def _live(entry: dict[str, Any]) -> bool:
    from empo.launch.status import LIVE, job_states, normalize

    return normalize(job_states({"x": entry}).get(entry["job_id"])) in LIVE


def show_log(graph: Graph, manifest: dict[str, Any], name: str, err: bool = False,
             follow: bool = False, out: IO[str] | None = None, poll_s: float = 1.0,
             timeout_s: float | None = None) -> Path:
    """Write the stage's log to `out` (stdout); with `follow`, keep writing what is appended
    until its job has ended (or Ctrl-C / `timeout_s`)."""
    out = out or sys.stdout
    key = find_stage(graph, name)
    path, entry = log_path(graph, manifest, key, err)
    if not path.exists() and not (follow and _live(entry)):
        raise LaunchError(f"{key}: {path} does not exist (job {entry['job_id']} has not started "
                          "writing it yet, or its folder was removed)")
    start = time.monotonic()
    position = 0
    while True:
        if path.exists():
            with open(path, "rb") as handle:
                handle.seek(position)
                chunk = handle.read()
            position += len(chunk)
            if chunk:
                out.write(chunk.decode("utf-8", errors="replace"))
                out.flush()
        if not follow:
            return path
        if not _live(entry):
            time.sleep(poll_s)  # what the job wrote while ending
            if path.exists() and path.stat().st_size > position:
                continue
            return path
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return path
        time.sleep(poll_s)
