"""results/<name>/manifest.json: the jobs started for each stage, the code and config they ran.

One entry per stage key (`sft/sft/seed-1`, `aggregate`): the job id (an array task `123_4` on
SLURM, a process id locally), the job's logs and folder. Each submission updates the entries of
the stages it started and appends itself to `submissions`; entries of stages it did not need to
start (already done) are kept. Only ids, paths, the git commit, the config hash and the container
image are written: never the environment, tokens or credentials.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from empo.config import ExperimentConfig
from empo.data.chat import eligible
from empo.data.ed import load_dialogues
from empo.errors import EmpoError, LaunchError
from empo.executors import EXECUTORS
from empo.launch.backends import backend
from empo.launch.containers import image_path
from empo.reader import ReadError, read_json
from empo.store import atomic_write_json, file_lock

MANIFEST = "manifest.json"


def read_manifest(experiment_dir: Path) -> dict[str, Any]:
    """The manifest, or {} when nothing was started from this results directory yet."""
    path = Path(experiment_dir) / MANIFEST
    if not os.path.lexists(path):
        return {}
    try:  # the bounded reader: a regular file, no symlink, size, depth and number limits
        data = read_json(path)
    except ReadError as err:
        raise LaunchError(str(err)) from None
    if not isinstance(data, dict):
        raise LaunchError(f"{path}: expected a JSON object")
    check_jobs(data.get("jobs", {}), path)
    history = data.get("history", [])
    if not isinstance(history, list):
        raise LaunchError(f"{path}: 'history' must be a list of job entries")
    check_jobs({f"history[{i}]": entry for i, entry in enumerate(history)}, path)
    check_intents(data.get("intents", []), path)
    return data


def check_jobs(jobs: Any, path: Path) -> None:
    """The manifest's `jobs` are what the launcher writes: stage key -> {job_id, executor, ...}
    with a job id of the executor's form (`Backend.job_id`: ids reach scancel/sacct as
    arguments)."""
    if not isinstance(jobs, dict):
        raise LaunchError(f"{path}: 'jobs' must be an object of stage key -> job entry")
    for key, entry in jobs.items():
        if not isinstance(entry, dict):
            raise LaunchError(f"{path}: jobs.{key} must be an object")
        executor, job_id = entry.get("executor"), entry.get("job_id")
        if executor not in EXECUTORS:
            raise LaunchError(f"{path}: jobs.{key}.executor {executor!r}; allowed: "
                              f"{', '.join(EXECUTORS)}")
        if not isinstance(job_id, str) or not backend(executor).job_id.fullmatch(job_id):
            raise LaunchError(f"{path}: jobs.{key}.job_id {job_id!r} is not a {executor} job id")
        for field in ("state", "stderr", "stdout", "folder"):
            if field in entry and entry[field] is not None and not isinstance(entry[field], str):
                raise LaunchError(f"{path}: jobs.{key}.{field} must be a string")


def check_intents(intents: Any, path: Path) -> None:
    """`intents` are what `add_intent` writes: a token, the job's name and comment, its folder
    and, per array index, stage key -> fingerprint."""
    if not isinstance(intents, list):
        raise LaunchError(f"{path}: 'intents' must be a list")
    for i, intent in enumerate(intents):
        fields = ("token", "name", "comment", "folder", "at")
        if not isinstance(intent, dict) or not all(isinstance(intent.get(f), str) for f in fields):
            raise LaunchError(f"{path}: intents[{i}] must be an object with string fields "
                              f"{', '.join(fields)}")
        units = intent.get("units")
        if not isinstance(units, list) or not all(
                isinstance(u, dict) and all(isinstance(v, str) for v in u.values()) for u in units):
            raise LaunchError(f"{path}: intents[{i}].units must be a list of stage key -> "
                              "fingerprint objects")


def git_commit(root: Path) -> tuple[str | None, bool]:
    """(HEAD commit of the project checkout or None, whether the tree has local changes)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--verify", "-q", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, bool(status)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def record_jobs(cfg: ExperimentConfig, executor: str, folder: Path,
                jobs: dict[str, dict[str, Any]], resolved: tuple[str, ...] = ()) -> dict[str, Any]:
    """Merge `jobs` (stage key -> entry) into the manifest; the first call for a job folder
    appends a submission, later ones (a local run starting jobs one by one) extend it. The
    intents of `resolved` tokens are dropped: their jobs are now recorded."""
    exp = cfg.experiment_dir
    commit, dirty = git_commit(cfg.root)

    with file_lock(exp / f".{MANIFEST}.lock"):
        manifest = read_manifest(exp)
        manifest.update({
            "experiment": cfg.name,
            "config_hash": cfg.config_hash(),
            "git_commit": commit,
            "git_dirty": dirty,
            "executor": executor,
            "container": {"runtime": cfg.cluster.container.runtime, "image": image_path(cfg)},
        })
        recorded = manifest.get("data") or {}
        if (recorded.get("source"), recorded.get("revision")) != (cfg.data.source,
                                                                  cfg.data.revision):
            manifest["data"] = data_summary(cfg)  # once per data source, with the first jobs
        current = manifest.setdefault("jobs", {})
        history = manifest.setdefault("history", [])  # every job ever queued: cancel, cost
        for key, new in jobs.items():
            old = current.get(key)
            if old is not None and old.get("job_id") != new.get("job_id"):
                history.append({"stage": key, **old})
        current.update(jobs)
        manifest["intents"] = [i for i in manifest.get("intents", []) if i["token"] not in resolved]
        ids = {entry["job_id"] for entry in jobs.values()}
        submissions = manifest.setdefault("submissions", [])
        if submissions and submissions[-1]["folder"] == str(folder):
            submissions[-1]["job_ids"] = sorted(ids | set(submissions[-1]["job_ids"]))
        else:
            submissions.append({"at": now(), "executor": executor, "folder": str(folder),
                                "git_commit": commit, "seeds": list(cfg.seeds),
                                "job_ids": sorted(ids)})
        atomic_write_json(exp / MANIFEST, manifest)
    return manifest


def add_intent(experiment_dir: Path, intent: dict[str, Any]) -> None:
    """Write-ahead: record a job about to be queued (`intents`) before its sbatch runs, so a
    submission killed between sbatch and `record_jobs` leaves a trace that finds the job."""
    with file_lock(experiment_dir / f".{MANIFEST}.lock"):
        manifest = read_manifest(experiment_dir)
        manifest.setdefault("intents", []).append(intent)
        atomic_write_json(experiment_dir / MANIFEST, manifest)


def settle_intents(experiment_dir: Path, tokens: set[str], history_entries: list[dict[str, Any]],
                   adopted: dict[str, dict[str, Any]]) -> None:
    """Drop the intents of `tokens` (their jobs were found and dealt with): `adopted` (stage key
    -> entry) become their stages' jobs, `history_entries` (and any job they replace) go to
    `history`."""
    with file_lock(experiment_dir / f".{MANIFEST}.lock"):
        manifest = read_manifest(experiment_dir)
        manifest["intents"] = [i for i in manifest.get("intents", []) if i["token"] not in tokens]
        history = manifest.setdefault("history", [])
        current = manifest.setdefault("jobs", {})
        history.extend({"stage": key, **current[key]} for key in adopted if key in current)
        history.extend(history_entries)
        current.update(adopted)
        atomic_write_json(experiment_dir / MANIFEST, manifest)


def restore_manifest(experiment_dir: Path, before: bytes | None,
                     cancelled: list[dict[str, Any]]) -> None:
    """Undo a refused submission: the manifest as it was before it (none, if there was none),
    with the jobs it queued and cancelled appended to `history` (they may have run a moment)."""
    path = experiment_dir / MANIFEST
    with file_lock(experiment_dir / f".{MANIFEST}.lock"):
        if before is None:
            path.unlink(missing_ok=True)
            return
        manifest = json.loads(before)
        manifest.setdefault("history", []).extend(cancelled)
        atomic_write_json(path, manifest)


def update_job(cfg: ExperimentConfig, stage_keys: list[str], **fields: Any) -> None:
    """Set fields of existing entries (e.g. a local job's exit state)."""
    exp = cfg.experiment_dir
    with file_lock(exp / f".{MANIFEST}.lock"):
        manifest = read_manifest(exp)
        for key in stage_keys:
            if key in manifest.get("jobs", {}):
                manifest["jobs"][key].update(fields)
        atomic_write_json(exp / MANIFEST, manifest)


def data_summary(cfg: ExperimentConfig) -> dict[str, Any]:
    """What the experiment's data is: the source, its revision and, per split it reads, the
    dialogues and the eligible ones (a failure to read is recorded as such: preflight and the
    stages report it where it matters)."""
    data: dict[str, Any] = {"source": cfg.data.source, "revision": cfg.data.revision, "splits": {}}
    for split in dict.fromkeys((cfg.data.train_split, cfg.data.eval_split)):
        try:
            loaded = load_dialogues(cfg.local_or_name(cfg.data.source), split, cfg.data.revision)
        except (EmpoError, OSError) as err:
            data["splits"][split] = {"error": " ".join(str(err).split())[:300]}
            continue
        data["splits"][split] = {"dialogues": len(loaded.dialogues),
                                 "eligible": len(eligible(loaded.dialogues)),
                                 "malformed_rows_dropped": loaded.malformed}
    return data
