"""Jobs a killed `empo submit` queued but never recorded, found again through SLURM.

`submit_graph` writes each job's intent into manifest.json before its sbatch runs (a token, the
job's name `<experiment>:<kind>[:<variant>]`, its comment `empo:<results dir tag>:<token>:<plan
fingerprint>`, its folder and, per array index, stage key -> fingerprint), then the job id once
sbatch has answered. An intent left without an id means the submission died in between: squeue
(by name and comment) and sacct (by name, since the intent) say what SLURM queued for it. A live
job whose stages still have the recorded fingerprints (and whose submitit pickle exists, so it
can run) is adopted as its stages' job; any other live one is cancelled; every one of them goes
into the manifest (jobs or history), so status, cancel and cost see it.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from empo.errors import LaunchError
from empo.launch.accounting import array_task_ids
from empo.launch.jobs import ArrayPlan
from empo.launch.manifest import read_manifest, settle_intents
from empo.launch.resources import Resources

log = logging.getLogger(__name__)

QUERY_TIMEOUT_S = 20


def experiment_tag(experiment_dir: Path) -> str:
    """8 hex digits naming one results directory (two directories may share an experiment name)."""
    return hashlib.sha256(str(Path(experiment_dir).resolve()).encode()).hexdigest()[:8]


def job_comment(experiment_dir: Path, token: str, units: list[dict[str, str]]) -> str:
    """The SLURM comment of a job: `empo:<results dir tag>:<token>:<fingerprint of its stages>`."""
    blob = json.dumps(units, sort_keys=True).encode()
    return f"empo:{experiment_tag(experiment_dir)}:{token}:{hashlib.sha256(blob).hexdigest()[:12]}"


def with_comment(resources: Resources, experiment_dir: Path, token: str,
                 plan: ArrayPlan) -> tuple[Resources, str, list[dict[str, str]]]:
    """`resources` with the job's SLURM comment (`job_comment`), the comment and the plan's units
    (stage key -> fingerprint per array task): what submit records and the dry run renders."""
    units = [{s.key: s.fingerprint for s in unit.stages} for unit in plan.units]
    comment = job_comment(experiment_dir, token, units)
    return dataclasses.replace(resources, extra={**resources.extra, "comment": comment}), \
        comment, units


@dataclass(frozen=True)
class Orphan:
    """One job (array task) SLURM holds for an intent the manifest has no id for."""

    job_id: str
    state: str
    intent: dict[str, Any]

    @property
    def stages(self) -> dict[str, str]:
        """Stage key -> fingerprint of what this job (array task) runs; {} if out of range."""
        index = int(self.job_id.split("_")[1]) if "_" in self.job_id else 0
        units = self.intent["units"]
        return units[index] if index < len(units) else {}

    def entry(self) -> dict[str, Any]:
        """Its manifest entry (submitit's log names in the intent's folder)."""
        folder = Path(self.intent["folder"])
        return {"job_id": self.job_id, "array_id": self.job_id.split("_")[0] if "_" in self.job_id
                else None, "unit": self.intent["name"], "executor": "slurm",
                "folder": str(folder), "stdout": str(folder / f"{self.job_id}_0_log.out"),
                "stderr": str(folder / f"{self.job_id}_0_log.err"),
                "submitted_at": self.intent["at"], "recovered": True}

    def runnable(self) -> bool:
        """Whether submitit moved its pickle in before the submission died (else it can't run)."""
        return (Path(self.intent["folder"]) / f"{self.job_id}_submitted.pkl").exists()


def _query(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LaunchError(f"{argv[0]} did not answer ({err}): cannot look for the jobs of an "
                          "interrupted submission; retry when SLURM answers") from None
    if done.returncode != 0:
        raise LaunchError(f"{argv[0]} failed: {done.stderr.strip()}: cannot look for the jobs of "
                          "an interrupted submission; retry when SLURM answers")
    return done.stdout


def _local_time(iso: str) -> str:
    """A manifest time (UTC ISO) as sacct's -S wants it (this machine's local time), 2 min early
    for clock skew."""
    when = datetime.datetime.fromisoformat(iso) - datetime.timedelta(minutes=2)
    return when.astimezone().strftime("%Y-%m-%dT%H:%M:%S")


def find_orphans(manifest: dict[str, Any]) -> list[Orphan]:
    """The jobs SLURM holds for the manifest's intents and the manifest does not name: live ones
    from squeue by name and comment, ended ones from sacct by name since the intent (by comment
    where accounting stores it; else the latest intent of that name submitted before the job)."""
    intents = manifest.get("intents", [])
    if not intents:
        return []
    known = {e["job_id"] for e in [*manifest.get("jobs", {}).values(), *manifest.get("history", [])]}
    by_comment = {i["comment"]: i for i in intents}
    names = ",".join(sorted({i["name"] for i in intents}))
    found: dict[str, Orphan] = {}
    queue = _query(["squeue", "--me", "-h", "-r", "-o", "%i|%k|%T", "-n", names])
    listed = set()  # squeue knows live jobs' comments: sacct's rows of these are not guessed at
    for line in queue.splitlines():
        job_id, comment, state = (line.split("|") + ["", ""])[:3]
        listed.add(job_id)
        if comment in by_comment and job_id not in known:
            found[job_id] = Orphan(job_id, state, by_comment[comment])
    since = _local_time(min(i["at"] for i in intents))
    acct = _query(["sacct", "-X", "-n", "-P", "-o", "JobID,JobName,Comment,State,Submit",
                   "-S", since, "-E", "now", "--name", names])
    for line in acct.splitlines():
        cols = line.split("|")
        if len(cols) < 5:
            continue
        intent = by_comment.get(cols[2]) or _latest_before(intents, cols[1], cols[4])
        for job_id in array_task_ids(cols[0]):
            if intent is not None and job_id not in known | listed:
                found[job_id] = Orphan(job_id, cols[3].split(" ")[0], intent)
    return [found[job_id] for job_id in sorted(found)]


def _latest_before(intents: list[dict[str, Any]], name: str, submit: str) -> dict[str, Any] | None:
    """The last intent named `name` written before sacct's Submit time (local, naive)."""
    try:
        submitted = datetime.datetime.fromisoformat(submit).astimezone()
    except ValueError:
        return None
    earlier = [i for i in intents if i["name"] == name
               and datetime.datetime.fromisoformat(i["at"]) <= submitted + datetime.timedelta(seconds=5)]
    return max(earlier, key=lambda i: i["at"]) if earlier else None


def settle_orphans(experiment_dir: Path, graph: Any, adopt: bool = True) -> list[str]:
    """Deal with the jobs of an interrupted submission (`find_orphans`) and drop its intents:
    with `adopt`, a live job whose stages are unfinished and still have the fingerprints it was
    queued for, and that can run, becomes their job; every other live one is cancelled (all of
    them without `adopt`: `empo cancel`). Ended ones go to the manifest's history (they count
    in cost.csv). Returns the ids cancelled."""
    from empo.launch.status import LIVE, normalize

    manifest = read_manifest(experiment_dir)
    intents = manifest.get("intents", [])
    if not intents:
        return []
    adopted: dict[str, dict[str, Any]] = {}
    history: list[dict[str, Any]] = []
    cancel: list[str] = []
    for orphan in find_orphans(manifest):
        live = normalize(orphan.state) in LIVE
        current = adopt and live and orphan.runnable() and bool(orphan.stages) and all(
            key in graph.stages and graph.stages[key].fingerprint == fp
            and not graph.stages[key].is_done() for key, fp in orphan.stages.items())
        for key, fp in orphan.stages.items():
            entry = {**orphan.entry(), "fingerprint": fp}
            if current:
                adopted[key] = entry
            else:
                history.append({"stage": key, **entry})
        if live and not current:
            cancel.append(orphan.job_id)
    if cancel:
        _scancel(cancel)
        log.warning("cancelled %d job(s) an interrupted submission queued that cannot be "
                    "adopted: %s", len(cancel), " ".join(cancel))
    if adopted:
        log.info("adopted the job(s) of an interrupted submission: %s",
                 " ".join(sorted({e["job_id"] for e in adopted.values()})))
    settle_intents(experiment_dir, {i["token"] for i in intents}, history, adopted)
    return cancel


def _scancel(job_ids: list[str]) -> None:
    done = subprocess.run(["scancel", "--", *job_ids], capture_output=True, text=True,
                          timeout=QUERY_TIMEOUT_S * 3)
    if done.returncode != 0:
        raise LaunchError(f"scancel {' '.join(job_ids)} failed: {done.stderr.strip()}")


def with_orphans(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as `empo status` shows it: an interrupted submission's live jobs stand as
    the job of their stages that have none (nothing is written; the next submit settles them)."""
    from empo.launch.status import LIVE, normalize

    if not manifest.get("intents"):
        return manifest
    try:
        orphans = find_orphans(manifest)
    except LaunchError as err:
        log.warning("%s", err)
        return manifest
    jobs = dict(manifest.get("jobs", {}))
    for orphan in orphans:
        if normalize(orphan.state) in LIVE:
            for key, fp in orphan.stages.items():
                jobs.setdefault(key, {**orphan.entry(), "fingerprint": fp})
    return {**manifest, "jobs": jobs}
