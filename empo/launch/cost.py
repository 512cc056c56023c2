"""What an experiment cost: GPU-hours and CPU-hours of every job it ever queued, per stage and
in total, from each job's elapsed time × the GPUs and CPUs it held (sacct's ElapsedRaw ×
AllocTRES on SLURM, all attempts of a requeued job; the local driver's own timings locally).
Earlier jobs of a stage (failed, cancelled, replaced, or queued by a submission that was killed
before recording them: the manifest's history) count too, with `kept` = no. A job that runs
several stages (an evaluation job: generate, epitome, bertscore, mmlu) is split between them in
proportion to the seconds each recorded in stage.json, equally where they did not record them.
Written to results/<name>/cost.csv; the total also goes under table.md.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empo.launch.accounting import job_info
from empo.launch.manifest import read_manifest
from empo.reader import ReadError, read_text
from empo.store import atomic_write_text

if TYPE_CHECKING:
    from empo.launch.accounting import JobInfo
    from empo.launch.status import StageStatus
    from empo.pipeline import Graph

COST_FILE = "cost.csv"
COLUMNS = ("stage", "job_id", "state", "kept", "elapsed_s", "gpus", "cpus", "gpu_hours",
           "cpu_hours")
FOOTER_START = "_Compute:"


def _seconds(graph: Graph, key: str) -> float | None:
    """How long the stage itself ran, from its stage.json (None: not recorded)."""
    stage = graph.stages.get(key)
    record = stage.record() if stage is not None else None
    seconds = (record or {}).get("seconds")
    return float(seconds) if isinstance(seconds, (int, float)) and seconds >= 0 else None


def shares(graph: Graph, statuses: list[StageStatus], details: dict[str, JobInfo],
           history: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """One row per (stage, job) of every job that ran: the stage's share of the job's hours.
    Current jobs (`statuses`) are split by the seconds their stages recorded; earlier ones
    (`history` entries: stage, job_id) equally between the stages they were queued for."""
    rows: list[dict[str, Any]] = []
    by_job: dict[str, list[StageStatus]] = {}
    for status in statuses:
        if status.job_id and status.job_id in details and \
                details[status.job_id].elapsed_s is not None:
            by_job.setdefault(status.job_id, []).append(status)
    for job_id, shared in by_job.items():
        seconds = [_seconds(graph, s.key) for s in shared]
        known = [x for x in seconds if x is not None]
        for status, own in zip(shared, seconds):
            share = ((own or 0.0) / sum(known) if len(known) == len(shared) and sum(known) > 0
                     else 1.0 / len(shared))
            kept = {"done": "yes", "running": "not yet", "pending": "not yet"}.get(status.state, "no")
            rows.append(_row(status.key, details[job_id], share, kept))
    current = set(by_job)
    earlier: dict[str, list[str]] = {}
    for entry in history:
        job_id = entry.get("job_id")
        if job_id not in current and job_id in details and details[job_id].elapsed_s is not None:
            earlier.setdefault(job_id, [])
            if entry.get("stage") not in earlier[job_id]:
                earlier[job_id].append(str(entry.get("stage")))
    for job_id, keys in earlier.items():
        rows += [_row(key, details[job_id], 1.0 / len(keys), "no") for key in keys]
    return rows


def _row(stage: str, info: JobInfo, share: float, kept: str) -> dict[str, Any]:
    hours = (info.elapsed_s or 0.0) / 3600.0
    return {"stage": stage, "job_id": info.job_id, "state": info.state.split(" ")[0],
            "kept": kept, "elapsed_s": info.elapsed_s or 0.0, "gpus": info.gpus,
            "cpus": info.cpus, "gpu_hours": hours * info.gpus * share,
            "cpu_hours": hours * info.cpus * share}


def add_costs(graph: Graph, statuses: list[StageStatus], details: dict[str, JobInfo],
              history: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Set each status's gpu_hours / cpu_hours: its share of every job it ever had (None
    without one that ran); returns the rows (`shares`)."""
    rows = shares(graph, statuses, details, history)
    by_key = {s.key: s for s in statuses}
    for status in statuses:
        status.gpu_hours = status.cpu_hours = None
    for row in rows:
        status = by_key.get(row["stage"])
        if status is not None:
            status.gpu_hours = (status.gpu_hours or 0.0) + row["gpu_hours"]
            status.cpu_hours = (status.cpu_hours or 0.0) + row["cpu_hours"]
    return rows


def totals(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """(GPU-hours, CPU-hours) over every row."""
    return (sum(r["gpu_hours"] for r in rows), sum(r["cpu_hours"] for r in rows))


def cost_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The CSV rows: each (stage, job), then `total`."""
    out = [{**r, "elapsed_s": f"{r['elapsed_s']:.0f}", "gpus": str(r["gpus"]),
            "cpus": str(r["cpus"]), "gpu_hours": f"{r['gpu_hours']:.6f}",
            "cpu_hours": f"{r['cpu_hours']:.6f}"} for r in rows]
    gpu, cpu = totals(rows)
    out.append({"stage": "total", "job_id": "", "state": "", "kept": "", "elapsed_s": "",
                "gpus": "", "cpus": "", "gpu_hours": f"{gpu:.6f}", "cpu_hours": f"{cpu:.6f}"})
    return out


def footer(rows: list[dict[str, Any]]) -> str:
    """The line under table.md: the experiment's total compute."""
    gpu, cpu = totals(rows)
    jobs = len({r["job_id"] for r in rows})
    wasted = sum(r["gpu_hours"] for r in rows if r["kept"] == "no")
    return (f"{FOOTER_START} {gpu:.2f} GPU-hours ({wasted:.2f} not kept), {cpu:.2f} CPU-hours "
            f"over {jobs} jobs (per stage and job: {COST_FILE})._")


def write_cost(experiment_dir: Path, rows: list[dict[str, Any]]) -> Path | None:
    """results/<name>/cost.csv (one row per stage and job that ran, then `total`), and the total
    as the footer of table.md when the table exists (replacing an earlier footer). None when no
    job has run yet."""
    if not rows:
        return None
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(cost_rows(rows))
    path = Path(experiment_dir) / COST_FILE
    atomic_write_text(path, buffer.getvalue())
    table = Path(experiment_dir) / "table.md"
    try:  # the bounded reader: a FIFO or a link out of the tree is not EmPO's table
        text = read_text(table, limit=16 << 20, follow=False) if table.exists() else None
    except ReadError:
        text = None
    if text is not None:
        lines = [line for line in text.rstrip("\n").splitlines()
                 if not line.startswith(FOOTER_START)]
        while lines and not lines[-1].strip():
            lines.pop()
        atomic_write_text(table, "\n".join(lines) + "\n\n" + footer(rows) + "\n")
    return path


def experiment_cost(graph: Graph, statuses: list[StageStatus], details: dict[str, JobInfo],
                    write: bool = True) -> Path | None:
    """Add the costs of every job the experiment queued (the manifest's current jobs and its
    history) to `statuses`; write cost.csv (and table.md's footer) unless `write` is off or the
    results directory is read-only (then None)."""
    history = read_manifest(graph.experiment_dir).get("history", [])
    missing = {f"history[{i}]": e for i, e in enumerate(history) if e["job_id"] not in details}
    if missing:  # an earlier job's state: accounting's (SLURM), what the driver recorded (local)
        ended = {e["job_id"]: e.get("state") or "UNKNOWN" for e in missing.values()}
        details = {**job_info(missing, ended), **details}
    rows = add_costs(graph, statuses, details, history)
    if not write:
        return None
    try:
        return write_cost(graph.experiment_dir, rows)
    except OSError:
        return None
