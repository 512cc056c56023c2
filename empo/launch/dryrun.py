"""`empo submit --dry-run`: every job's sbatch script, checked by `sbatch --test-only`, nothing
queued.

The scripts are the ones `empo submit` would hand to sbatch (submitit writes them from the same
executor parameters), one per job or job array, in results/<name>/dry-run/<NN>-<job>.sbatch.
Job ids do not exist yet, so a dependency names the jobs it waits for as `<array key>` (an
array) or `<array key>_<task>`; `sbatch --test-only` gets each script without its dependency
and reports when and where the job would start (skipped, and said so, where there is no SLURM).
The manifest and experiment.yaml are untouched; the only files ever deleted are the scripts an
earlier dry run listed in dry-run/.written.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from empo.assets import ensure_tiny_assets
from empo.config import ExperimentConfig
from empo.launch import check_container, job_resources, make_executor
from empo.launch.accounting import run_query
from empo.launch.backends import batch_backend
from empo.launch.jobs import ArrayPlan, dependency, plan_arrays, plan_units
from empo.launch.orphans import with_comment
from empo.launch.preflight import PreflightError, Problem, preflight
from empo.launch.resources import Resources
from empo.launch.submit import job_name
from empo.reader import ReadError, read_text
from empo.store import atomic_write_text, claim_experiment_dir

DRY_RUN_DIR = "dry-run"
WRITTEN = ".written"             # the scripts this dry run wrote: the only ones it ever deletes
SCRIPT_NAME = re.compile(r"[0-9]{2,}-[A-Za-z0-9_.+-]+\.sbatch")
DRY_RUN_TOKEN = "dry-run"       # in the job comment where submit puts each job's own token
DEPENDENCY_LINES = re.compile(r"^#SBATCH --(dependency|kill-on-invalid-dep)=.*\n", re.M)


@dataclass
class DryJob:
    """One job (or array) `empo submit` would queue."""

    plan: ArrayPlan
    script: Path
    dependency: str | None
    resources: Resources
    start: str = ""                # sbatch --test-only's verdict ("" where sbatch is missing)
    ok: bool = True

    @property
    def array(self) -> str:
        seeds = [s for s in self.plan.seeds if s is not None]
        if len(self.plan.units) > 1:
            return f"0-{len(self.plan.units) - 1} (seeds {', '.join(map(str, seeds))})"
        return f"seed {seeds[0]}" if seeds else "-"

    @property
    def request(self) -> str:
        r = self.resources
        gpus = f", {r.gpus_per_node} GPU/node" if r.gpus_per_node else ""
        return (f"{r.nodes} node × {r.tasks_per_node} task{gpus}, {r.cpus_per_task} cpu/task, "
                f"{r.mem_gb} GB, {r.timeout_min} min, {r.partition or '(default)'}")


def slurm_answers() -> bool:
    """sbatch is here and the controller answers (sinfo; not tried when SLURM_CONF names no
    file: the clients would then spend half a minute on DNS lookups)."""
    conf = os.environ.get("SLURM_CONF")
    if shutil.which("sbatch") is None or (conf and not os.path.exists(conf)):
        return False
    return run_query(["sinfo", "-h", "-o", "%P"]) is not None


SKIPPED = "not checked: sbatch --test-only skipped (no SLURM controller answers here)"


def test_only(text: str, answering: bool = True) -> tuple[bool, str]:
    """`sbatch --test-only` on the script without its dependency: (accepted, what it said)."""
    if not answering:
        return True, SKIPPED
    done = subprocess.run(["sbatch", "--test-only"], input=DEPENDENCY_LINES.sub("", text),
                          capture_output=True, text=True, timeout=60)
    said = " ".join((done.stderr + done.stdout).split()).removeprefix("sbatch: ")
    match = re.search(r"to start at (\S+) using (\d+) processors on nodes (\S+)", said)
    if done.returncode == 0 and match:
        return True, f"{match.group(1)} on {match.group(3)}"
    return done.returncode == 0, said or f"sbatch --test-only exited {done.returncode}"


def note_written(out: Path, script: Path) -> None:
    """Add `script` to the dry-run directory's list of scripts it wrote (WRITTEN)."""
    listed = _written(out)
    atomic_write_text(out / WRITTEN, "".join(f"{name}\n" for name in [*listed, script.name]))


def _written(out: Path) -> list[str]:
    try:
        text = read_text(out / WRITTEN, limit=1 << 20, follow=False, strict=True)
    except ReadError:
        return []
    return [name for name in text.splitlines() if SCRIPT_NAME.fullmatch(name)]


def remove_written(out: Path) -> None:
    """Delete the scripts an earlier dry run wrote (those WRITTEN lists, regular files only);
    any other file in the directory is left as it is."""
    for name in _written(out):
        path = out / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
    atomic_write_text(out / WRITTEN, "")


def dry_run(cfg: ExperimentConfig, check: bool = True) -> tuple[list[DryJob], list[Problem]]:
    """Write every pending job's script under results/<name>/dry-run/ and test each with
    sbatch; returns the jobs and the problems (preflight's, unless not `check`, and scripts
    sbatch refused)."""
    from empo.pipeline import build_graph

    chosen = batch_backend(cfg.cluster.executor)  # the scripts of the batch system submit uses
    claim_experiment_dir(cfg.experiment_dir, create=False)  # a foreign directory: refused first
    if cfg.assets:
        ensure_tiny_assets(cfg.resolve(cfg.assets))
    graph = build_graph(cfg)
    problems: list[Problem] = preflight(cfg, chosen.name, graph) if check else []
    if not check:
        check_container(cfg, chosen.name)
    out = claim_experiment_dir(cfg.experiment_dir) / DRY_RUN_DIR  # EmPO's, or refused
    out.mkdir(exist_ok=True)
    remove_written(out)
    arrays = plan_arrays(plan_units(graph))
    by_key = {plan.key: plan for plan in arrays}
    job_ids: dict[str, str] = {}
    array_ids: dict[str, str] = {}
    jobs = []
    answering = slurm_answers()
    for index, plan in enumerate(arrays):
        dep = dependency(plan, by_key, job_ids, array_ids)
        resources, _, _ = with_comment(  # the --signal lead and the comment submit would use
            job_resources(cfg, plan.kind, job_name(cfg, plan.kind, plan.variant),
                          plan_signal=check), cfg.experiment_dir, DRY_RUN_TOKEN, plan)
        executor = make_executor(cfg, chosen.name, out / "jobs", resources, dependency=dep,
                                 script_only=True)
        text = chosen.script(executor, len(plan.units))
        script = out / f"{index:02d}-{plan.key.replace('/', '-')}.sbatch"
        note_written(out, script)  # before it exists: a crash never leaves an unlisted script
        atomic_write_text(script, text)
        ok, start = test_only(text, answering)
        jobs.append(DryJob(plan, script, dep, resources, start, ok))
        if not ok:
            problems.append(Problem(f"job {plan.key}", f"sbatch --test-only refused {script.name}: "
                                    f"{start}", "fix the cluster.* value sbatch names"))
        if len(plan.units) > 1:
            array_ids[plan.key] = f"<{plan.key}>"
        for task, unit in enumerate(plan.units):
            job_ids[unit.key] = f"<{plan.key}>_{task}" if len(plan.units) > 1 else f"<{plan.key}>"
    return jobs, problems


def print_dry_run(cfg: ExperimentConfig, check: bool = True) -> int:
    """`empo submit --dry-run`: the job table on stdout; PreflightError when anything would
    fail (the scripts are written either way)."""
    from rich.table import Table

    from empo.launch.status import console

    jobs, problems = dry_run(cfg, check)
    out = cfg.experiment_dir / DRY_RUN_DIR
    table = Table(title=f"{cfg.name}: {len(jobs)} job(s) would be queued (dry run, nothing "
                  f"queued; scripts in {out})", title_justify="left")
    for column in ("job", "stages", "array", "dependency", "resources", "expected start"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        stages = ", ".join(dict.fromkeys(s.kind for u in job.plan.units for s in u.stages))
        table.add_row(job.plan.key, stages, job.array, job.dependency or "-", job.request,
                      job.start or "-")
    console().print(table)
    if any(job.start == SKIPPED for job in jobs):
        print("empo: sbatch --test-only was skipped: no SLURM controller answers here (sbatch "
              "or srun not on PATH); the scripts are written, nothing was checked or queued",
              file=sys.stderr)
    if problems:
        raise PreflightError(problems, what=f"dry run: scripts written to {out}, nothing queued")
    return 0
