"""`empo job`: the Python side of the plain sbatch wrappers (jobs/*.sbatch, jobs/submit-all.sh).

    empo job run [--print-command] KIND CONFIG [seed=S] [variant=V] [stage=NAME] [KEY=VALUE...]
    empo job sbatch KIND CONFIG [seed=S] [variant=V] [KEY=VALUE...] [-- SBATCH OPTIONS]
    empo job submit-all CONFIG [KEY=VALUE...] [--jobs-dir DIR] [--dry-run]
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from empo.commands.common import add_config_args, load_experiment
from empo.errors import LaunchError
from empo.launch import check_launch
from empo.launch.backends import batch_backend
from empo.launch.wrapper import run_wrapper, sbatch_wrapper, submit_all

JOBS_DIR = "jobs"


def register(sub: argparse._SubParsersAction) -> None:
    job = sub.add_parser("job", help="the plain sbatch wrappers' command (jobs/*.sbatch)")
    actions = job.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run", help="run one wrapper's stage inside cluster.container (srun, one task per GPU), "
        "named <experiment>:<stage>:<variant>:seed-<s> and recorded in the manifest",
        description="What jobs/KIND.sbatch runs. EMPO_DRY_RUN=1 (or --print-command) prints the "
        "command instead; EMPO_BIN replaces the `python -m empo.cli` run inside the container; "
        "EMPO_TASKS_PER_NODE the tasks of a training stage (default: GPUs of the node).")
    run.add_argument("--print-command", action="store_true", help="print, do not run")
    run.add_argument("kind", help="sft, dpo, eval, aggregate or pipeline")
    run.add_argument("args", nargs=argparse.REMAINDER,
                     help="CONFIG [seed=S] [variant=V] [stage=NAME] [KEY=VALUE ...]")
    run.set_defaults(handler=_run)

    queue = actions.add_parser(
        "sbatch", help="queue one wrapper's job (jobs/KIND.sbatch) named and recorded at "
        "submission, so `empo status` shows it while it pends",
        description="sbatch jobs/KIND.sbatch CONFIG [seed=S] ... as "
        "<experiment>:<stage>:<variant>:seed-<s>, its log in results/<name>/jobs/sbatch/, "
        "recorded in results/<name>/manifest.json before it starts. Words after `--` are sbatch "
        "options (e.g. -- --time=4:00:00); the wrapper's #SBATCH lines give the rest.")
    queue.add_argument("kind", help="sft, dpo, eval or aggregate")
    queue.add_argument("args", nargs=argparse.REMAINDER,
                       help="CONFIG [seed=S] [variant=V] [stage=NAME] [KEY=VALUE ...] [-- SBATCH OPTIONS]")
    queue.add_argument("--jobs-dir", type=Path, default=None,
                       help="where the wrappers are (default: jobs/ of the project root)")
    queue.set_defaults(handler=_sbatch)

    submit = actions.add_parser(
        "submit-all", help="sbatch every pending stage of every seed through jobs/*.sbatch, "
        "chained with --dependency=afterok (what jobs/submit-all.sh runs)")
    add_config_args(submit)
    submit.add_argument("--jobs-dir", type=Path, default=None,
                        help="where the wrappers are (default: jobs/ of the project root)")
    submit.add_argument("--dry-run", action="store_true", help="print the sbatch commands only")
    submit.set_defaults(handler=_submit_all)


def _run(args: argparse.Namespace) -> int:
    dry = args.print_command or os.environ.get("EMPO_DRY_RUN") == "1"
    return run_wrapper(args.kind, args.args, dry_run=dry)


def _sbatch(args: argparse.Namespace) -> int:
    words = list(args.args)
    split = words.index("--") if "--" in words else len(words)
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch not found on PATH: empo job sbatch runs on a SLURM login node")
    job_id = sbatch_wrapper(args.kind, words[:split], args.jobs_dir, words[split + 1:])
    print(job_id)
    return 0


def _submit_all(args: argparse.Namespace) -> int:
    cfg = load_experiment(args, ensure_assets=False)
    if not args.dry_run:
        check_launch(cfg, batch_backend(cfg.cluster.executor).name)
    jobs_dir = (args.jobs_dir or cfg.root / JOBS_DIR).resolve()
    ids = submit_all(cfg, str(args.config), list(args.overrides), jobs_dir, dry_run=args.dry_run)
    if not args.dry_run:
        for key, job_id in ids.items():
            print(f"{job_id}\t{key}")
        if not ids:
            print(f"{cfg.experiment_dir}: every stage is done; nothing submitted")
    return 0
