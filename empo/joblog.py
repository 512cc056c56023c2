"""Readable job logs: a header saying what the job is (stages, fingerprints, host, GPUs, git
commit, container image), progress bars as periodic plain lines when the log is a file, and each
repeated library warning once. Set up by the job body (`pipeline.StageCall`) before any stage
imports its libraries, so their handlers write through the filtered streams.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from empo.reader import ReadError, read_json

if TYPE_CHECKING:
    from empo.pipeline import Stage

PROGRESS_INTERVAL_S = float(os.environ.get("EMPO_PROGRESS_INTERVAL_S", "30"))
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[,.]\d+)?\s*")
_WARNING = re.compile(r"warn", re.IGNORECASE)


class PlainLines:
    """A text stream for a log file: a line rewritten with `\\r` (a progress bar) is written as
    a plain line at most every `interval_s` seconds and once complete; a warning line seen before
    (timestamps aside) is dropped, with the source line Python prints under it."""

    def __init__(self, stream: IO[str], interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self._stream = stream
        self._interval = interval_s
        self._line = ""
        self._last_progress: float | None = None
        self._seen: set[str] = set()
        self._dropped = False

    def write(self, text: str) -> int:
        for piece in re.split(r"(\r\n|\r|\n)", text):
            if piece in ("\n", "\r\n"):
                self._emit(self._line)
                self._line = ""
            elif piece == "\r":
                self._progress(self._line)
                self._line = ""
            else:
                self._line += piece
        return len(text)

    def _progress(self, line: str) -> None:
        now = time.monotonic()
        if line.strip() and (self._last_progress is None or
                             now - self._last_progress >= self._interval):
            self._last_progress = now
            self._stream.write(line.rstrip() + "\n")

    def _emit(self, line: str) -> None:
        if self._dropped and line[:1].isspace():  # the `  warnings.warn(...)` under a dropped one
            return
        self._dropped = False
        if _WARNING.search(line):
            key = _TIMESTAMP.sub("", line).strip()
            if key in self._seen:
                self._dropped = True
                return
            self._seen.add(key)
        self._stream.write(line + "\n")

    def flush(self) -> None:
        self._stream.flush()

    def close_line(self) -> None:
        """Write what is left of an unterminated line (at the end of the job)."""
        if self._line.strip():
            self._stream.write(self._line.rstrip() + "\n")
        self._line = ""
        self.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, buffer, ...
        return getattr(self._stream, name)


def plain_streams() -> None:
    """sys.stdout/sys.stderr through PlainLines where they are not terminals (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, PlainLines) and not stream.isatty():
            setattr(sys, name, PlainLines(stream))


def finish_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, PlainLines):
            stream.close_line()


def _git_commit(root: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", "-q", "HEAD"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _manifest(experiment_dir: Path) -> dict[str, Any]:
    """manifest.json as JSON data (what the launcher recorded at submission), {} if unreadable."""
    try:
        data = read_json(experiment_dir / "manifest.json")
    except ReadError:
        return {}
    return data if isinstance(data, dict) else {}


def _gpus() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    slurm = os.environ.get("SLURM_GPUS_ON_NODE") or os.environ.get("SLURM_JOB_GPUS")
    if visible is None and slurm is None:
        return "none"
    parts = [f"CUDA_VISIBLE_DEVICES={visible}"] if visible is not None else []
    if slurm:
        parts.append(f"SLURM_GPUS_ON_NODE={slurm}")
    return " ".join(parts) or "none"


def header_lines(stages: tuple[Stage, ...] | list[Stage]) -> list[str]:
    """What the job is, for the top of its logs."""
    first = stages[0]
    cfg = first.config
    manifest = _manifest(cfg.experiment_dir)
    commit = manifest.get("git_commit") or _git_commit(cfg.root) or "unknown"
    if manifest.get("git_dirty"):
        commit += " (with local changes)"
    container = manifest.get("container") or {}
    runtime = container.get("runtime") or cfg.cluster.container.runtime
    image = container.get("image") or cfg.cluster.container.image
    job = os.environ.get("SLURM_JOB_ID")
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    where = f"SLURM job {job}" if job else f"pid {os.getpid()}"
    lines = [f"empo job: {', '.join(s.key for s in stages)} ({cfg.name})"]
    lines += [f"  stage {s.key}: fingerprint {s.fingerprint or '-'}" for s in stages]
    lines += [f"  config hash: {cfg.config_hash()}",
              f"  host: {socket.gethostname()} ({where})",
              f"  GPUs: {_gpus()}",
              f"  threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
              f"(task CPUs: {os.environ.get('SLURM_CPUS_PER_TASK', 'not set')})",
              f"  git commit: {commit}",
              f"  container image: {image if runtime != 'none' and image else 'none'}"
              + (f" ({runtime})" if runtime != "none" else "")]
    return lines


ONE_LOG = "EMPO_ONE_LOG"  # set by a plain sbatch wrapper whose job writes one log for both


def one_log() -> bool:
    """Whether this process's stdout and stderr end in the same file: the same open file here,
    or, under srun (a pipe each), the wrapper found them one (`ONE_LOG`)."""
    if os.environ.get(ONE_LOG) == "1":
        return True
    try:
        out, err = os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)


def start_job_logging(stages: tuple[Stage, ...] | list[Stage]) -> None:
    """In a job process: plain streams, logging to stderr (unless configured), the header on
    both logs. Outside a job (the CLI's `empo stage`), the header goes to the log only."""
    in_job = "SUBMITIT_EXECUTOR" in os.environ or "SLURM_JOB_ID" in os.environ
    if in_job:
        plain_streams()
    if not logging.getLogger().handlers:  # a job process: stage logs go to the job's stderr
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
    if not stages:
        return
    lines = header_lines(stages)
    if in_job:
        if os.environ.get("SLURM_PROCID", "0") != "0" and "SUBMITIT_EXECUTOR" not in os.environ:
            return  # srun's tasks of a plain sbatch wrapper share one log: rank 0 writes it
        print("\n".join(lines), file=sys.stdout, flush=True)
        if not one_log():  # sbatch's default: both streams in slurm-%j.out
            print("\n".join(lines), file=sys.stderr, flush=True)
    else:
        logging.getLogger("empo.job").info("\n".join(lines))
