"""`empo submit --dry-run`: every job's sbatch script, checked by `sbatch --test-only`, nothing
queued.

The scripts are the ones `empo submit` would hand to sbatch (submitit writes them from the same
executor parameters), one per job or job array, in results/<name>/dry-run/<NN>-<job>.sbatch.
Job ids do not exist yet, so a dependency names the jobs it waits for as `<array key>` (an
array) or `<array key>_<task>`; `sbatch --test-only` gets each script without its dependency
and reports when and where the job would start. The manifest and experiment.yaml are untouched.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from empo.config import ExperimentConfig
from empo.launch import check_container, check_executor, job_resources, make_executor
from empo.launch.jobs import ArrayPlan, dependency, plan_arrays, plan_units
from empo.launch.preflight import PreflightError, Problem, preflight
from empo.launch.resources import Resources
from empo.launch.submit import job_name

DRY_RUN_DIR = "dry-run"
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


def script_text(executor, count: int) -> str:
    """The sbatch script submitit writes for this executor: one job, or an array of `count`."""
    from submitit.slurm.slurm import _make_sbatch_string

    inner = executor._executor
    params = dict(inner.parameters)
    if count > 1:
        params["map_count"] = count
    return _make_sbatch_string(command=inner._submitit_command_str, folder=inner.folder, **params)


def slurm_answers() -> bool:
    """sbatch is here and the controller answers (sinfo; not tried when SLURM_CONF names no
    file: the clients would then spend half a minute on DNS lookups)."""
    import os

    from empo.launch.preflight import _run

    conf = os.environ.get("SLURM_CONF")
    if shutil.which("sbatch") is None or (conf and not os.path.exists(conf)):
        return False
    return _run(["sinfo", "-h", "-o", "%P"]) is not None


def test_only(text: str, answering: bool = True) -> tuple[bool, str]:
    """`sbatch --test-only` on the script without its dependency: (accepted, what it said)."""
    if not answering:
        return True, "not checked (no SLURM controller answers here)"
    done = subprocess.run(["sbatch", "--test-only"], input=DEPENDENCY_LINES.sub("", text),
                          capture_output=True, text=True, timeout=60)
    said = " ".join((done.stderr + done.stdout).split()).removeprefix("sbatch: ")
    match = re.search(r"to start at (\S+) using (\d+) processors on nodes (\S+)", said)
    if done.returncode == 0 and match:
        return True, f"{match.group(1)} on {match.group(3)}"
    return done.returncode == 0, said or f"sbatch --test-only exited {done.returncode}"


def dry_run(cfg: ExperimentConfig, check: bool = True) -> tuple[list[DryJob], list[Problem]]:
    """Write every pending job's script under results/<name>/dry-run/ and test each with
    sbatch; returns the jobs and the problems (preflight's, unless not `check`, and scripts
    sbatch refused)."""
    from empo.pipeline import build_graph

    check_executor("slurm")
    if cfg.assets:
        from empo.assets import ensure_tiny_assets

        ensure_tiny_assets(cfg.resolve(cfg.assets))
    graph = build_graph(cfg)
    problems: list[Problem] = preflight(cfg, "slurm", graph) if check else []
    if not check:
        check_container(cfg, "slurm")
    out = cfg.experiment_dir / DRY_RUN_DIR
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.sbatch"):  # the scripts of an earlier dry run (ours only)
        old.unlink()
    arrays = plan_arrays(plan_units(graph))
    by_key = {plan.key: plan for plan in arrays}
    job_ids: dict[str, str] = {}
    array_ids: dict[str, str] = {}
    jobs = []
    answering = slurm_answers()
    for index, plan in enumerate(arrays):
        dep = dependency(plan, by_key, job_ids, array_ids)
        resources = job_resources(cfg, plan.kind, job_name(cfg, plan.kind, plan.variant))
        executor = make_executor(cfg, "slurm", out / "jobs", resources, dependency=dep,
                                 script_only=True)
        text = script_text(executor, len(plan.units))
        script = out / f"{index:02d}-{plan.key.replace('/', '-')}.sbatch"
        script.write_text(text)
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
    if problems:
        raise PreflightError(problems, what=f"dry run: scripts written to {out}, nothing queued")
    return 0
