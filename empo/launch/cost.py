"""What an experiment cost: GPU-hours and CPU-hours per stage and in total, from each job's
elapsed time × the GPUs and CPUs it held (sacct's ElapsedRaw × AllocTRES on SLURM, all attempts
of a requeued job; the local driver's own timings locally). A job that runs several stages (an
evaluation job: generate, epitome, bertscore, mmlu) is split between them in proportion to the
seconds each recorded in stage.json, equally where they did not record them.
Written to results/<name>/cost.csv; the total also goes under table.md.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from empo.store import atomic_write_text

if TYPE_CHECKING:
    from empo.launch.accounting import JobInfo
    from empo.launch.status import StageStatus
    from empo.pipeline import Graph

COST_FILE = "cost.csv"
COLUMNS = ("stage", "job_id", "state", "elapsed_s", "gpus", "cpus", "gpu_hours", "cpu_hours")
FOOTER_START = "_Compute:"


def _seconds(graph: Graph, key: str) -> float | None:
    """How long the stage itself ran, from its stage.json (None: not recorded)."""
    stage = graph.stages.get(key)
    record = stage.record() if stage is not None else None
    seconds = (record or {}).get("seconds")
    return float(seconds) if isinstance(seconds, (int, float)) and seconds >= 0 else None


def add_costs(graph: Graph, statuses: list[StageStatus], details: dict[str, JobInfo]) -> None:
    """Set each status's gpu_hours / cpu_hours: its share of its job's (None without a job)."""
    by_job: dict[str, list[StageStatus]] = {}
    for status in statuses:
        if status.job_id and status.job_id in details and \
                details[status.job_id].elapsed_s is not None:
            by_job.setdefault(status.job_id, []).append(status)
    for job_id, shared in by_job.items():
        info = details[job_id]
        hours = (info.elapsed_s or 0.0) / 3600.0
        seconds = [_seconds(graph, s.key) for s in shared]
        known = [x for x in seconds if x is not None]
        total = sum(known)
        for status, own in zip(shared, seconds):
            if len(known) == len(shared) and total > 0:
                share = (own or 0.0) / total
            else:
                share = 1.0 / len(shared)
            status.gpu_hours = hours * info.gpus * share
            status.cpu_hours = hours * info.cpus * share


def totals(statuses: list[StageStatus]) -> tuple[float, float]:
    """(GPU-hours, CPU-hours) over every stage."""
    return (sum(s.gpu_hours or 0.0 for s in statuses), sum(s.cpu_hours or 0.0 for s in statuses))


def cost_rows(statuses: list[StageStatus], details: dict[str, JobInfo]) -> list[dict[str, str]]:
    rows = []
    for s in statuses:
        if s.gpu_hours is None:
            continue
        info = details[s.job_id or ""]
        rows.append({"stage": s.key, "job_id": s.job_id or "", "state": s.state,
                     "elapsed_s": f"{info.elapsed_s or 0:.0f}", "gpus": str(info.gpus),
                     "cpus": str(info.cpus), "gpu_hours": f"{s.gpu_hours:.6f}",
                     "cpu_hours": f"{s.cpu_hours or 0:.6f}"})
    gpu, cpu = totals(statuses)
    rows.append({"stage": "total", "job_id": "", "state": "", "elapsed_s": "", "gpus": "",
                 "cpus": "", "gpu_hours": f"{gpu:.6f}", "cpu_hours": f"{cpu:.6f}"})
    return rows


def footer(statuses: list[StageStatus]) -> str:
    """The line under table.md: the experiment's total compute."""
    gpu, cpu = totals(statuses)
    jobs = len({s.job_id for s in statuses if s.gpu_hours is not None})
    return (f"{FOOTER_START} {gpu:.2f} GPU-hours, {cpu:.2f} CPU-hours over {jobs} jobs "
            f"(per stage: {COST_FILE})._")


def write_cost(experiment_dir: Path, statuses: list[StageStatus],
               details: dict[str, JobInfo]) -> Path | None:
    """results/<name>/cost.csv (one row per stage that ran, then `total`), and the total as the
    footer of table.md when the table exists (replacing an earlier footer). None when no job
    has run yet."""
    rows = cost_rows(statuses, details)
    if len(rows) == 1:
        return None
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(experiment_dir) / COST_FILE
    atomic_write_text(path, buffer.getvalue())
    table = Path(experiment_dir) / "table.md"
    if table.exists():
        lines = [line for line in table.read_text().rstrip("\n").splitlines()
                 if not line.startswith(FOOTER_START)]
        while lines and not lines[-1].strip():
            lines.pop()
        atomic_write_text(table, "\n".join(lines) + "\n\n" + footer(statuses) + "\n")
    return path


def experiment_cost(graph: Graph, statuses: list[StageStatus], details: dict[str, JobInfo],
                    write: bool = True) -> Path | None:
    """Add the costs to `statuses`; write cost.csv (and table.md's footer) unless `write` is off
    or the results directory is read-only (then None)."""
    add_costs(graph, statuses, details)
    if not write:
        return None
    try:
        return write_cost(graph.experiment_dir, statuses, details)
    except OSError:
        return None
