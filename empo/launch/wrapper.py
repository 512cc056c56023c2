"""The Python side of the plain sbatch wrappers (jobs/*.sbatch, jobs/submit-all.sh).

A wrapper only hands its arguments to `empo job run KIND ...`, which turns them into the stage's
command inside `cluster.container` (the command the launcher gives submitit: `containers.py`),
launches it one task per GPU with srun and the torch distributed env, names the job
`<experiment>:<stage>:<variant>:seed-<s>` and records it in the experiment's manifest (so `empo
status` / `empo cancel` see it). `submit_all` queues every pending stage of every seed through
the wrappers with `--dependency=afterok`, in the order and with the resources `empo submit` uses.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from empo.config import ExperimentConfig, load_config, read_experiment
from empo.distributed import requeue_signal
from empo.errors import LaunchError
from empo.hub import hub_environment
from empo.joblog import ONE_LOG, one_log
from empo.launch.containers import check_container, container_command
from empo.launch.manifest import add_intent, now, record_jobs, settle_intents
from empo.launch.orphans import job_comment
from empo.launch.resources import job_resources
from empo.quoting import shell_words
from empo.stages import REGISTRY, default_variant, evaluation_kinds, training_kinds
from empo.store import claim_experiment_dir

log = logging.getLogger(__name__)

# jobs/train.sbatch CONFIG stage=KIND runs any training stage (sft.sbatch, dpo.sbatch: shortcuts)
TRAIN = "train"
# what the training wrappers ask SLURM to send their batch step (`--signal=B:USR2@300`)
WRAPPER_SIGNAL = signal.SIGUSR2
# per task, inside the allocation: torchrun-style env from the task's SLURM variables
TASK_ENV = ('export RANK=${SLURM_PROCID:-0} LOCAL_RANK=${SLURM_LOCALID:-0} '
            'WORLD_SIZE=${SLURM_NTASKS:-1} LOCAL_WORLD_SIZE=${SLURM_NTASKS_PER_NODE:-1}; exec "$@"')


@dataclass
class WrapperArgs:
    """`jobs/KIND.sbatch CONFIG [seed=S] [variant=V] [stage=NAME] [KEY=VALUE | --opt ...]`."""

    kind: str
    config: str
    seed: int | None = None
    variant: str | None = None
    stage: str | None = None
    rest: list[str] = field(default_factory=list)   # overrides and other words, in order

    @property
    def overrides(self) -> list[str]:
        return [w for w in self.rest if "=" in w and not w.startswith("-")]

    @property
    def results_dir_mode(self) -> bool:
        """aggregate.sbatch RESULTS_DIR: `empo aggregate` of a results directory."""
        return self.kind == "aggregate" and Path(self.config).is_dir()


def wrappers() -> tuple[str, ...]:
    """The wrapper kinds: train (any training stage, `stage=KIND`), each training stage's own
    shortcut, eval, aggregate and pipeline."""
    return (TRAIN, *training_kinds(), "eval", "aggregate", "pipeline")


def parse_wrapper_args(kind: str, argv: list[str]) -> WrapperArgs:
    if kind not in wrappers():
        raise LaunchError(f"unknown wrapper {kind!r}; allowed: {', '.join(wrappers())}")
    if not argv or "=" in argv[0] or argv[0].startswith("-"):
        raise LaunchError(f"usage: sbatch [SBATCH OPTIONS] jobs/{kind}.sbatch CONFIG [seed=S] "
                          "[KEY=VALUE ...]")
    args = WrapperArgs(kind, argv[0])
    for word in argv[1:]:
        key, _, value = word.partition("=")
        if key == "seed":
            if not value.isdigit():
                raise LaunchError(f"seed must be an integer, got {value!r}")
            args.seed = int(value)
        elif key in ("variant", "stage") and "=" in word:
            setattr(args, key, value)
        else:
            args.rest.append(word)
    if kind == "eval" and not args.variant:
        raise LaunchError("eval.sbatch needs variant=V (baseline, sft, sft_dpo or a sweep point)")
    if kind == TRAIN and args.stage not in training_kinds():
        raise LaunchError(f"train.sbatch needs stage=KIND, one of: {', '.join(training_kinds())}")
    return args


def stage_argv(args: WrapperArgs) -> list[str]:
    """The `empo` words the job runs (after the executable)."""
    if args.kind == "pipeline":
        return ["run", args.config, *args.rest, "--executor", "local"]
    if args.results_dir_mode:
        return ["aggregate", args.config, *args.rest]
    if args.kind == "aggregate":
        return ["stage", "aggregate", args.config, *args.rest]
    stage = args.stage or args.kind
    opts = ["--variant", args.variant or default_variant(stage) or ""]
    if args.seed is not None:
        opts += ["--seed", str(args.seed)]
    return ["stage", stage, args.config, *args.rest, *opts]


def job_name(cfg: ExperimentConfig, stage: str, variant: str | None = None,
             seed: int | None = None) -> str:
    """`<experiment>:<stage>:<variant>:seed-<s>` (`<experiment>:aggregate` for the aggregate)."""
    parts = [cfg.name, stage] + ([variant] if variant else []) + (
        [f"seed-{seed}"] if seed is not None else [])
    return ":".join(parts)


def tasks_per_node(kind: str, env: dict[str, str]) -> int:
    """A stage kind with `tasks_per_gpu` (training): one task per GPU of the node
    (EMPO_TASKS_PER_NODE overrides); else one."""
    if kind not in REGISTRY or not REGISTRY[kind].tasks_per_gpu:
        return 1
    value = env.get("EMPO_TASKS_PER_NODE") or env.get("SLURM_GPUS_ON_NODE") or "1"
    return max(1, int(value)) if value.isdigit() else 1


def rendezvous(env: dict[str, str]) -> dict[str, str]:
    """MASTER_ADDR (first host of the job) and MASTER_PORT (10000 + job id mod 50000)."""
    addr = env.get("MASTER_ADDR")
    if not addr:
        addr = "127.0.0.1"
        nodes = env.get("SLURM_JOB_NODELIST")
        if nodes and shutil.which("scontrol"):
            out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True,
                                 text=True, timeout=30)
            addr = (out.stdout.split() or [addr])[0]
    job = env.get("SLURM_JOB_ID", "0")
    port = env.get("MASTER_PORT") or str(10000 + (int(job) if job.isdigit() else 0) % 50000)
    return {"MASTER_ADDR": addr, "MASTER_PORT": port}


@dataclass
class Launch:
    command: list[str]          # what runs inside the container (prefix + empo words)
    launch: list[str]           # the whole line: srun / task env / command
    env: dict[str, str]         # added to the job's environment


def build_launch(cfg: ExperimentConfig | None, args: WrapperArgs, env: dict[str, str]) -> Launch:
    """The job's command line: the container prefix of `cfg.cluster.container` (none without a
    config), the empo words, and outside it srun with one task per GPU where SLURM runs the job.
    EMPO_BIN replaces the `python -m empo.cli` run inside (a test probe, another install)."""
    cwd = Path.cwd()
    if cfg is not None and cfg.cluster.container.runtime != "none":
        for path in (cfg.experiment_dir,):   # bind sources must exist
            path.mkdir(parents=True, exist_ok=True)
        gpus = int(env.get("SLURM_GPUS_ON_NODE") or 0) > 0
        container = container_command(cfg, [cfg.experiment_dir, cfg.root, cwd], gpus=gpus)
        words = shlex.split(container.python or "")
        prefix, python, srun_args = words[:-1], words[-1:], list(container.srun_args)
    else:
        prefix, python, srun_args = [], [sys.executable], []
    empo = shlex.split(env["EMPO_BIN"]) if env.get("EMPO_BIN") else [*python, "-m", "empo.cli"]
    command = [*prefix, *empo, *stage_argv(args)]
    per_node = tasks_per_node(args.stage or args.kind, env)
    if env.get("SLURM_JOB_ID") and shutil.which("srun"):
        nodes = int(env.get("SLURM_JOB_NUM_NODES") or 1)
        srun = ["srun", f"--nodes={nodes}", f"--ntasks-per-node={per_node}",
                f"--ntasks={nodes * per_node}", "--kill-on-bad-exit=1"]
        if env.get("SLURM_CPUS_PER_TASK"):
            srun.append(f"--cpus-per-task={env['SLURM_CPUS_PER_TASK']}")
        if srun_args:  # pyxis: srun starts the container; the task shell runs inside it
            launch = [*srun, *srun_args, "bash", "-c", TASK_ENV, "empo-task", *empo,
                      *stage_argv(args)]
        else:
            launch = [*srun, "bash", "-c", TASK_ENV, "empo-task", *command]
    else:
        launch = ["bash", "-c", TASK_ENV, "empo-task", *command]
    hub = hub_environment(cfg) if cfg is not None else {}  # cluster.hf_home, cluster.offline
    return Launch(command, launch, {**rendezvous(env), **thread_env(env), **hub})


def thread_env(env: dict[str, str]) -> dict[str, str]:
    """OMP/MKL threads = the task's CPUs (SLURM_CPUS_PER_TASK), as the launcher's jobs get them
    (`launch.job_environment`), unless the user set them: accelerate would otherwise pick 2."""
    cpus = env.get("SLURM_CPUS_PER_TASK", "")
    return {name: cpus for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
            if cpus.isdigit() and name not in env}


def wrapper_config(args: WrapperArgs) -> ExperimentConfig | None:
    """The experiment the wrapper runs (for aggregate RESULTS_DIR: its stored experiment.yaml)."""
    if args.results_dir_mode:
        return read_experiment(Path(args.config))
    return load_config(args.config, args.overrides)


def stage_keys(cfg: ExperimentConfig, args: WrapperArgs) -> list[str]:
    """The graph stages the job runs (its manifest entries); [] for the pipeline wrapper."""
    from empo.pipeline import build_graph

    if args.kind == "pipeline" or args.results_dir_mode:
        return []
    graph = build_graph(cfg)
    if args.kind == "aggregate":
        return ["aggregate"] if "aggregate" in graph.stages else []
    variant = args.variant or default_variant(args.stage or args.kind)
    stage = args.stage or args.kind
    kinds = evaluation_kinds() if stage == "eval" else (stage,)
    keys = [s.key for s in graph if s.kind in kinds and s.variant == variant and s.seed == args.seed]
    share = f"share/{variant}/seed-{args.seed}"
    return keys or ([share] if share in graph.stages else [])


def _scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                         timeout=30)
    return dict(w.split("=", 1) for w in out.stdout.split() if "=" in w)


def wrapper_job_name(cfg: ExperimentConfig, args: WrapperArgs) -> str:
    """The name of a wrapper's job: `<experiment>:<stage>:<variant>:seed-<s>`."""
    stage = args.stage or args.kind
    return (job_name(cfg, stage) if args.kind in ("aggregate", "pipeline")
            else job_name(cfg, stage, args.variant or default_variant(stage), args.seed))


def sbatch_wrapper(kind: str, argv: list[str], jobs_dir: Path | None, options: list[str]) -> str:
    """`empo job sbatch`: queue jobs/KIND.sbatch with `argv` (and sbatch `options`), named and
    recorded at submission, so `empo status` shows it while it pends. Returns the job id."""
    from empo.launch.experiment import write_experiment
    from empo.pipeline import build_graph

    args = parse_wrapper_args(kind, argv)
    cfg = wrapper_config(args)
    keys = stage_keys(cfg, args) if cfg is not None else []
    if not keys:
        raise LaunchError(f"empo job sbatch {kind}: no stage of the experiment to record; queue "
                          f"it with `sbatch jobs/{kind}.sbatch ...` (recorded once it starts)")
    graph = build_graph(cfg)
    name = wrapper_job_name(cfg, args)
    logs = cfg.experiment_dir / "jobs" / "sbatch"
    write_experiment(cfg)  # `empo status results/<name>` works before the job starts
    logs.mkdir(parents=True, exist_ok=True)
    script = (jobs_dir or cfg.root / "jobs").resolve() / f"{kind}.sbatch"
    return queue_wrapper(cfg, [f"--job-name={name}", f"--output={logs}/%x-%j.out", *options],
                         script, argv,
                         {key: graph.stages[key].fingerprint for key in keys}, name)


def register_running_job(cfg: ExperimentConfig, args: WrapperArgs, env: dict[str, str]) -> str:
    """Name this SLURM job after its stage and record it in the manifest; returns the name."""
    name = wrapper_job_name(cfg, args)
    job_id = env["SLURM_JOB_ID"]
    if env.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    subprocess.run(["scontrol", "update", f"JobId={env['SLURM_JOB_ID']}", f"JobName={name}"],
                   capture_output=True, timeout=30)
    keys = stage_keys(cfg, args)
    if keys:
        info = _scontrol_job(env["SLURM_JOB_ID"])
        entry = {"job_id": job_id, "array_id": None, "unit": name, "executor": "slurm",
                 "folder": env.get("SLURM_SUBMIT_DIR", str(Path.cwd())),
                 "stdout": info.get("StdOut", ""), "stderr": info.get("StdErr", ""),
                 "submitted_at": now(), "wrapper": f"jobs/{args.kind}.sbatch"}
        claim_experiment_dir(cfg.experiment_dir)  # recorded only into EmPO's own directory
        record_jobs(cfg, "slurm", Path(entry["folder"]), {key: dict(entry) for key in keys})
    return name


def run_wrapper(kind: str, argv: list[str], dry_run: bool = False) -> int:
    """The body of jobs/KIND.sbatch; returns the job's exit status."""
    args = parse_wrapper_args(kind, argv)
    env = dict(os.environ)
    cfg = wrapper_config(args)
    if cfg is not None:
        check_container(cfg, "slurm")
    launch = build_launch(cfg, args, env)
    if dry_run:
        print(" ".join(f"{k}={v}" for k, v in launch.env.items()))
        print("command: " + shell_words(launch.command))
        print("launch: " + shell_words(launch.launch))
        return 0
    name = f"jobs/{kind}.sbatch"
    if cfg is not None and env.get("SLURM_JOB_ID"):
        name = register_running_job(cfg, args, env)
    print(f"empo job {env.get('SLURM_JOB_ID', 'local')} ({name}): {shell_words(launch.command)}",
          file=sys.stderr, flush=True)

    one = {ONE_LOG: "1"} if one_log() else {}  # srun gives the tasks a pipe each: tell them
    status, signalled = run_passing_on_requeue(launch.launch, {**env, **launch.env, **one})
    if signalled and env.get("SLURM_JOB_ID"):
        print(f"empo job: the requeue signal reached {name}; requeueing job "
              f"{env['SLURM_JOB_ID']} (a training stage resumes from the step it saved)",
              file=sys.stderr, flush=True)
        requeue = subprocess.run(["scontrol", "requeue", env["SLURM_JOB_ID"]],
                                 capture_output=True, text=True, timeout=60)
        if requeue.returncode == 0:
            return status
        print(f"empo job: scontrol requeue failed: {requeue.stderr.strip()}", file=sys.stderr,
              flush=True)
    if status != 0:
        print(f"empo job: {name} failed (exit {status}); once fixed, resubmit the same job with\n"
              f"  sbatch jobs/{kind}.sbatch {shell_words(argv)}", file=sys.stderr, flush=True)
    return status


def run_passing_on_requeue(argv: list[str], env: dict[str, str]) -> tuple[int, bool]:
    """Run the job's launch command; the training wrappers' `--signal=B:USR2@<lead>` reaches this
    process (the batch step), which passes it on as the signal a training stage saves at (srun
    hands it to every task). Returns (exit status, whether it was signalled)."""
    to_stage = requeue_signal()
    proc = subprocess.Popen(argv, env=env)
    signalled = False

    def pass_on(signum: int, frame: Any) -> None:  # noqa: ARG001 - a signal handler's signature
        nonlocal signalled
        signalled = True
        proc.send_signal(to_stage)

    previous = signal.signal(WRAPPER_SIGNAL, pass_on)
    try:
        return proc.wait(), signalled
    finally:
        signal.signal(WRAPPER_SIGNAL, previous)


# ------------------------------------------------------------------------------ submit-all

def wrapper_call(unit: Any, config: str, overrides: list[str],
                 jobs_dir: Path | None = None) -> tuple[str, list[str]]:
    """(wrapper, its arguments) running one job of the plan (launch/jobs.py's Unit): a training
    stage through its own jobs/KIND.sbatch where `jobs_dir` has one, else jobs/train.sbatch."""
    if unit.kind == "aggregate":
        return "aggregate", [config, *overrides]
    wrapper = "eval" if unit.kind in ("eval", "share") else unit.kind
    stage = []
    if wrapper in training_kinds() and jobs_dir is not None \
            and not (jobs_dir / f"{wrapper}.sbatch").exists():
        wrapper, stage = TRAIN, [f"stage={unit.kind}"]
    if wrapper not in wrappers():
        raise LaunchError(f"no jobs/*.sbatch wrapper runs {unit.key} (job kind {unit.kind}); "
                          "queue this experiment with `empo submit`")
    extra = [] if default_variant(unit.kind) == unit.variant else [f"variant={unit.variant}"]
    return wrapper, [config, *overrides, *stage, *extra, f"seed={unit.seed}"]


def submit_all(cfg: ExperimentConfig, config: str, overrides: list[str], jobs_dir: Path,
               dry_run: bool = False) -> dict[str, str]:
    """sbatch every pending job of the graph through the wrappers, each after its deps (afterok),
    with the resources of the config; records them in the manifest. Returns unit key -> job id.
    A refused sbatch cancels everything queued before it (all or nothing, as `empo submit`)."""
    from empo.launch.experiment import write_experiment
    from empo.launch.jobs import plan_units
    from empo.pipeline import build_graph

    graph = build_graph(cfg)
    units = plan_units(graph)
    logs = cfg.experiment_dir / "jobs" / "sbatch"
    if not dry_run:
        write_experiment(cfg)
        logs.mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    for unit in units:
        wrapper, wargs = wrapper_call(unit, config, overrides, jobs_dir)
        name = (job_name(cfg, "aggregate") if unit.kind == "aggregate"
                else job_name(cfg, unit.kind if wrapper == TRAIN else wrapper, unit.variant,
                              unit.seed))
        options = job_resources(cfg, unit.kind, name).sbatch_options()
        options += [f"--output={logs}/%x-%j.out", "--kill-on-invalid-dep=yes"]
        if unit.deps:
            options.append("--dependency=afterok:" + ":".join(
                ids.get(d, f"${d}") for d in unit.deps))
        argv = ["sbatch", "--parsable", *options, str(jobs_dir / f"{wrapper}.sbatch"), *wargs]
        if dry_run:
            print(shell_words(argv))
            ids[unit.key] = f"<{unit.key}>"
            continue
        try:
            ids[unit.key] = queue_wrapper(cfg, options, jobs_dir / f"{wrapper}.sbatch", wargs,
                                          {s.key: s.fingerprint for s in unit.stages}, unit.key)
        except LaunchError as err:
            queued = list(ids.values())
            if queued:
                subprocess.run(["scancel", *queued], capture_output=True, timeout=60)
            rolled = f"; cancelled the {len(queued)} job(s) queued before it" if queued else ""
            raise LaunchError(f"{err}{rolled}") from None
        log.info("queued %s: %s", name, ids[unit.key])
    return ids


def queue_wrapper(cfg: ExperimentConfig, options: list[str], script: Path, wargs: list[str],
                  stages: dict[str, str], unit: str) -> str:
    """`sbatch OPTIONS SCRIPT WARGS` (OPTIONS hold --job-name and --output), recorded at
    submission so `empo status` shows the job while it pends: its intent (stage key ->
    fingerprint) goes into the manifest first, its SLURM comment names it, its id follows
    (`launch/orphans.py` finds it if this process dies in between). Returns the job id."""
    name = next(o.split("=", 1)[1] for o in options if o.startswith("--job-name="))
    logs = Path(next(o.split("=", 1)[1] for o in options if o.startswith("--output="))).parent
    token = uuid.uuid4().hex[:12]
    comment = job_comment(cfg.experiment_dir, token, [stages])
    add_intent(cfg.experiment_dir, {"token": token, "name": name, "comment": comment,
                                    "folder": str(logs), "at": now(), "units": [stages]})
    run = subprocess.run(["sbatch", "--parsable", f"--comment={comment}", *options, str(script),
                          *wargs], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        settle_intents(cfg.experiment_dir, {token}, [], {})
        raise LaunchError(f"sbatch refused {name!r}: {run.stderr.strip()}")
    job_id = run.stdout.strip().split(";")[0]
    out = str(logs / f"{name}-{job_id}.out")
    entry = {"job_id": job_id, "array_id": None, "unit": unit, "executor": "slurm",
             "folder": str(logs), "stdout": out, "stderr": out, "submitted_at": now(),
             "wrapper": f"jobs/{script.name}"}
    record_jobs(cfg, "slurm", logs, {key: {**entry, "fingerprint": fp} for key, fp in stages.items()},
                resolved=(token,))
    return job_id
