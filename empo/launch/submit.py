"""Send an experiment's pending stages to SLURM: arrays across seeds, afterok/aftercorr deps.

Jobs go in dependency order. If sbatch refuses one (a partition it rejects, a bad account),
every job submitted before it is cancelled, the manifest is put back as it was and the error
shows sbatch's own message: a submission is all or nothing. Write-ahead: each job's intent
(name, comment, stages and their fingerprints) is in manifest.json before its sbatch runs, its id
right after; a submission killed in between leaves an intent, and the next one adopts or
cancels what SLURM queued for it (`launch/orphans.py`).
"""
from __future__ import annotations

import datetime
import logging
import subprocess
import uuid
from pathlib import Path
from typing import Any

from empo.config import ExperimentConfig
from empo.errors import LaunchError
from empo.launch import clean_submission_env, job_resources, make_executor
from empo.launch.backends import Backend, batch_backend
from empo.launch.jobs import Unit, dependency, plan_arrays, plan_units
from empo.launch.manifest import (MANIFEST, add_intent, now, read_manifest, record_jobs,
                                  restore_manifest)
from empo.launch.orphans import settle_orphans, with_comment
from empo.pipeline import Graph, stage_call

log = logging.getLogger(__name__)


def job_folder(cfg: ExperimentConfig, executor: str) -> Path:
    """A fresh submitit folder per submission (results/<name>/jobs/<time>-<executor>-<id>): job
    ids restart at 1 on a new cluster, and stale result pickles must never answer for new jobs."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return cfg.experiment_dir / "jobs" / f"{stamp}-{executor}-{uuid.uuid4().hex[:6]}"


def job_name(cfg: ExperimentConfig, kind: str, variant: str | None) -> str:
    return f"{cfg.name}:{kind}" + (f":{variant}" if variant else "")


def entry(job: Any, unit: Unit, executor: str, folder: Path, array_id: str | None) -> dict[str, Any]:
    """The manifest entry of one job (shared by the stages of its unit)."""
    return {"job_id": str(job.job_id), "array_id": array_id, "unit": unit.key,
            "executor": executor, "folder": str(folder), "stdout": str(job.paths.stdout),
            "stderr": str(job.paths.stderr), "submitted_at": now()}


def submit_graph(cfg: ExperimentConfig, graph: Graph, folder: Path) -> dict[str, dict[str, Any]]:
    """Queue every pending stage on SLURM; returns stage key -> manifest entry (also recorded).

    A stage whose earlier job is still pending or running is not queued again: what needs it
    waits on that job (`afterok`). Arrays wait on the union of their tasks' live jobs. Jobs an
    interrupted submission queued are adopted or cancelled first (`orphans.settle_orphans`).
    The batch system is cluster.executor's when it has a queue, else SLURM's (`batch_backend`)."""
    chosen = batch_backend(cfg.cluster.executor)
    settle_orphans(cfg.experiment_dir, graph)
    live, stale = live_jobs(graph, chosen)
    if stale:  # queued for an earlier config of their stage: replaced by this submission
        log.warning("cancelling jobs of an earlier config: %s", " ".join(_cancel(stale)))
    units = plan_units(graph, [s for s in graph.pending() if s.key not in live])
    if not units:
        return {}
    waits_on = {unit.key: sorted({live[d] for s in unit.stages for d in s.deps if d in live})
                for unit in units}
    arrays = plan_arrays(units)
    by_key = {plan.key: plan for plan in arrays}
    job_ids: dict[str, str] = {}
    array_ids: dict[str, str] = {}
    queued: list[str] = []
    entries: dict[str, dict[str, Any]] = {}
    path = cfg.experiment_dir / MANIFEST
    before = path.read_bytes() if path.exists() else None  # put back if sbatch refuses a job
    for plan in arrays:
        dep = dependency(plan, by_key, job_ids, array_ids)
        earlier = sorted({job for unit in plan.units for job in waits_on[unit.key]})
        if earlier:  # jobs of an earlier submission that are still queued or running
            dep = ",".join(filter(None, [dep, "afterok:" + ":".join(earlier)]))
        name = job_name(cfg, plan.kind, plan.variant)
        token = uuid.uuid4().hex[:12]
        resources, comment, units = with_comment(job_resources(cfg, plan.kind, name,
                                                               plan_signal=True),
                                                 cfg.experiment_dir, token, plan)
        executor = make_executor(cfg, chosen.name, folder, resources, dependency=dep)
        add_intent(cfg.experiment_dir, {"token": token, "name": name, "comment": comment,
                                        "folder": str(folder), "at": now(), "units": units})
        try:  # jobs must not inherit this process's SLURM_*/RANK/MASTER_* (e.g. inside a job)
            with clean_submission_env():
                jobs = executor.submit_array([stage_call(unit.stages) for unit in plan.units])
        except Exception as err:  # noqa: BLE001 - sbatch's refusal, whatever submitit wraps it in
            undone = _cancel(queued)
            restore_manifest(cfg.experiment_dir, before, [
                {"stage": key, **entry} for key, entry in entries.items()])
            message = str(err).strip() or type(err).__name__
            rolled = (f"; cancelled the {len(undone)} job(s) queued before it ({' '.join(undone)})"
                      if undone else "; nothing was submitted")
            raise LaunchError(f"sbatch refused job {name!r} (partition "
                              f"{cfg.cluster.partition or 'default'}): {message}{rolled}") from None
        array_id = jobs[0].job_id.split("_")[0] if len(jobs) > 1 else None
        if array_id:
            array_ids[plan.key] = array_id
            queued.append(array_id)
        else:
            queued.append(jobs[0].job_id)
        queued_now: dict[str, dict[str, Any]] = {}
        for unit, job in zip(plan.units, jobs):
            job_ids[unit.key] = job.job_id
            for stage in unit.stages:
                queued_now[stage.key] = {**entry(job, unit, chosen.name, folder, array_id),
                                         "fingerprint": stage.fingerprint}
        record_jobs(cfg, chosen.name, folder, queued_now, resolved=(token,))
        entries.update(queued_now)
        log.info("queued %s: %s%s", plan.key, array_id or jobs[0].job_id,
                 f" (after {dep})" if dep else "")
    return entries


def live_jobs(graph: Graph, chosen: Backend) -> tuple[dict[str, str], list[str]]:
    """({stage key: id of its job from an earlier submission, still pending or running, for the
    stage's current fingerprint}, [ids of live jobs queued for an earlier fingerprint]), from the
    manifest and the batch system `chosen` (squeue/sacct). Stages that are done are left out."""
    from empo.launch.status import LIVE, job_states, normalize

    jobs = {key: entry for key, entry in chosen.list(read_manifest(graph.experiment_dir)
                                                     .get("jobs", {})).items()
            if key in graph.stages and not graph.stages[key].is_done()}
    states = job_states(jobs, graph.experiment_dir) if jobs else {}
    live = {key: entry for key, entry in jobs.items()
            if normalize(states.get(entry["job_id"])) in LIVE}
    current = {key: e["job_id"] for key, e in live.items()
               if e.get("fingerprint") in (None, graph.stages[key].fingerprint)}
    stale = sorted({e["job_id"] for key, e in live.items() if key not in current}
                   - set(current.values()))
    return current, stale


def _cancel(job_ids: list[str]) -> list[str]:
    """scancel `job_ids`; the ids scancel accepted (all of them, or none when it failed)."""
    if not job_ids:
        return []
    done = subprocess.run(["scancel", "--", *job_ids], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        log.error("scancel %s failed: %s", " ".join(job_ids), done.stderr.strip())
        return []
    return job_ids
