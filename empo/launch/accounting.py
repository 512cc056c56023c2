"""What SLURM (or the local driver) knows about each job beyond its state: elapsed time, nodes,
requeues, exit code, the pending reason, the CPUs and GPUs it holds — for `empo status` and
the cost of an experiment. From sacct where accounting answers, else from squeue (live jobs
only; the run store says what finished); local jobs from the manifest's own timings.
"""
from __future__ import annotations

import datetime
import logging
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from empo.launch.backends import by_backend
from empo.reader import ReadError, read_text

log = logging.getLogger(__name__)

SACCT_FIELDS = "JobID,State,ElapsedRaw,NodeList,ExitCode,Reason,AllocTRES,AllocCPUS"
SQUEUE_FORMAT = "%i|%T|%r|%M|%N|%C|%b"
EXCEPTION_TAIL = 256 * 1024  # bytes of a job's stderr read for its exception


@dataclass
class JobInfo:
    """One job (an array task counts as one) as accounting or the local driver sees it."""

    job_id: str
    state: str = ""
    elapsed_s: float | None = None   # summed over attempts (a requeued job runs more than once)
    nodes: str = ""
    requeues: int = 0
    exit_code: str = ""              # SLURM's "code:signal", e.g. "1:0"
    reason: str = ""                 # squeue's pending reason (Dependency, Resources, Priority)
    cpus: int = 0
    gpus: int = 0
    source: str = ""                 # sacct | squeue | local


def _tres(text: str, name: str) -> int:
    """`gres/gpu=2` in `billing=2,cpu=2,gres/gpu=2,node=1` -> 2 (0 when absent)."""
    match = re.search(rf"(?:^|,){re.escape(name)}=(\d+)", text or "")
    return int(match.group(1)) if match else 0


ARRAY_RANGE = re.compile(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]")


def array_task_ids(job_id: str) -> list[str]:
    """SLURM's record of array tasks that never started, `41_[0-1,4%2]` -> 41_0 41_1 41_4;
    any other id as it is."""
    match = ARRAY_RANGE.fullmatch(job_id)
    if match is None:
        return [job_id]
    tasks: list[str] = []
    for part in match.group(2).split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            tasks += [f"{match.group(1)}_{i}" for i in range(int(first), int(last or first) + 1)]
    return tasks


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """`sacct -n -P -X -D -o SACCT_FIELDS` rows -> one JobInfo per job id: one row per attempt
    (-D), so a requeued job has several; elapsed is summed, the last row gives the state. A
    range record of array tasks that never started (`41_[0-1%2]`) stands for each of them."""
    out: dict[str, JobInfo] = {}
    rows = [line.split("|") for line in text.splitlines()]
    for cols in [[task, *cols[1:]] for cols in rows if len(cols) >= 8 and cols[0]
                 for task in array_task_ids(cols[0])]:
        job_id, state, elapsed, nodes, exit_code, reason, tres, cpus = cols[:8]
        info = out.get(job_id)
        if info is None:
            info = out[job_id] = JobInfo(job_id, elapsed_s=0.0, source="sacct")
        else:
            info.requeues += 1
        info.state = state
        info.elapsed_s = (info.elapsed_s or 0.0) + float(elapsed or 0)
        info.nodes = "" if nodes.startswith("None") else nodes
        info.exit_code = exit_code
        info.reason = "" if reason == "None" else reason
        gpus, cpus_n = _tres(tres, "gres/gpu"), _tres(tres, "cpu") or int(cpus or 0)
        info.gpus, info.cpus = gpus or info.gpus, cpus_n or info.cpus
    return out


def _clock(text: str) -> float | None:
    """squeue's %M (`1-02:03:04`, `3:04`) -> seconds."""
    days, _, rest = text.rpartition("-")
    try:
        parts = [int(p) for p in rest.split(":")]
    except ValueError:
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds + 86400 * int(days or 0)


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """`squeue -h -r -o SQUEUE_FORMAT` rows -> JobInfo of the jobs still queued or running."""
    out: dict[str, JobInfo] = {}
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) < 7:
            continue
        job_id, state, reason, used, nodes, cpus, gres = cols[:7]
        gpus = re.search(r"gpu(?::[^:,]+)?:(\d+)", gres)
        out[job_id] = JobInfo(job_id, state, _clock(used), nodes, reason=
                              "" if reason == "None" else reason, cpus=int(cpus or 0)
                              if cpus.isdigit() else 0, gpus=int(gpus.group(1)) if gpus else 0,
                              source="squeue")
    return out


QUERY_TIMEOUT_S = 8.0    # squeue waits MessageTimeout (10 s) per retry on a dead slurmctld
RETRY_AFTER_S = 60.0     # a command that timed out is not asked again for this long
_silent: dict[str, float] = {}   # command -> when it timed out (this process)


def run_query(argv: list[str]) -> str | None:
    """A SLURM query's stdout; None when it fails, or does not answer within QUERY_TIMEOUT_S:
    then one line says so, and the command is not asked again for RETRY_AFTER_S (status with
    slurmctld down takes one timeout, not one per query)."""
    if time.monotonic() - _silent.get(argv[0], -RETRY_AFTER_S) < RETRY_AFTER_S:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _silent[argv[0]] = time.monotonic()
        what = ("SLURM accounting (slurmdbd)" if argv[0] in ("sacct", "sacctmgr")
                else "the SLURM controller (slurmctld)")
        log.warning("%s is not answering (%s timed out after %.0f s): what it knows is left "
                    "out", what, argv[0], QUERY_TIMEOUT_S)
        return None
    except OSError:
        return None
    return done.stdout if done.returncode == 0 else None


def slurm_job_info(job_ids: list[str]) -> dict[str, JobInfo]:
    """sacct for every job (all attempts); squeue adds the pending reason of queued jobs and
    stands in for sacct where accounting is off (then ended jobs are simply absent)."""
    if not job_ids:
        return {}
    ids = ",".join(job_ids)
    # an array's tasks that never started are one range record, listed under the array's id
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids if "_" in job_id})
    acct = run_query(["sacct", "-n", "-P", "-X", "-D", "-o", SACCT_FIELDS, "-j",
                 ",".join([*job_ids, *arrays])])
    queue = run_query(["squeue", "-h", "-r", "-o", SQUEUE_FORMAT, "-j", ids])
    found = parse_sacct(acct) if acct else {}
    for job_id, live in (parse_squeue(queue) if queue else {}).items():
        if job_id in found:
            found[job_id].reason = live.reason or found[job_id].reason
            found[job_id].gpus = found[job_id].gpus or live.gpus
        else:
            found[job_id] = live
    return {job_id: found[job_id] for job_id in job_ids if job_id in found}


def _epoch(text: Any) -> float | None:
    try:
        return datetime.datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def local_job_info(entry: dict[str, Any], state: str, now: float | None = None) -> JobInfo:
    """A local job from its manifest entry: `elapsed_s` once ended, else now - `submitted_at`."""
    elapsed = entry.get("elapsed_s")
    if not isinstance(elapsed, (int, float)):
        started = _epoch(entry.get("submitted_at"))
        elapsed = None if started is None or state not in ("RUNNING", "") else \
            max(0.0, (now or time.time()) - started)
    return JobInfo(str(entry["job_id"]), state, elapsed, str(entry.get("host") or ""),
                   cpus=_int(entry.get("cpus")), gpus=_int(entry.get("gpus")), source="local")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def job_info(jobs: dict[str, dict[str, Any]], states: dict[str, str]) -> dict[str, JobInfo]:
    """JobInfo of every job of a manifest's `jobs` (stage key -> entry), by job id, from the
    backend that ran each (sacct/squeue; the local driver's timings)."""
    out: dict[str, JobInfo] = {}
    for chosen, entries in by_backend(jobs.values()).values():
        out.update(chosen.job_info(entries, states))
    return out


def this_host() -> str:
    return socket.gethostname().split(".")[0]


# ----------------------------------------------------------------------------- the exception

def exception_line(log: str | Path | None) -> str:
    """The cause of a failed job: the exception line (`ValueError: ...`) of the first failing
    rank, read from the tail of every rank's stderr log (`log` and, for submitit's per-task logs
    `<job>_<task>_log.err`, its siblings), whatever prefix a launcher puts before each line
    (`[rank1]: `, `[default0]:`). In one interleaved log the first rank to print a traceback
    failed first; across per-task logs the lowest task with one is taken. "[rank N] " is put
    before the line when the log says which rank it was; "" when there is none (or no log)."""
    if not log:
        return ""
    for path in rank_logs(Path(log)):
        found = _first_failure(_tail(path))
        if found:
            return found
    return ""


def rank_logs(log: Path) -> list[Path]:
    """`log` and the other tasks' logs of the same job (submitit: `<job>_<task>_log.err`), by
    task."""
    match = re.fullmatch(r"(.+)_(\d+)_log\.err", log.name)
    if match is None:
        return [log]
    siblings = {int(m.group(1)): path for path in log.parent.glob(f"{match.group(1)}_*_log.err")
                if (m := re.fullmatch(rf"{re.escape(match.group(1))}_(\d+)_log\.err", path.name))}
    return [siblings[task] for task in sorted(siblings)] or [log]


def _tail(path: Path) -> str:
    try:
        return read_text(path, limit=EXCEPTION_TAIL, tail=True)
    except (OSError, ReadError):
        return ""


TRACEBACK = "Traceback (most recent call last):"


def _first_failure(text: str) -> str:
    """The exception line of the first prefix (rank) that printed a traceback: the last line
    of that rank's last traceback that is neither indented nor blank once the prefix is off."""
    lines = text.replace("\r", "\n").splitlines()
    starts = [(i, line[:line.index(TRACEBACK)]) for i, line in enumerate(lines) if TRACEBACK in line]
    if not starts:
        return ""
    prefix = starts[0][1]
    last = max(i for i, p in starts if p == prefix)
    for line in lines[last + 1:]:
        if not line.startswith(prefix):
            continue
        body = line[len(prefix):]
        if body.strip() and not body[0].isspace():
            rank = re.search(r"\d+", prefix)
            return ((f"[rank {rank.group()}] " if rank else "") + body.strip())[:300]
    return ""
