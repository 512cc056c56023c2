"""`empo run | submit | status | cancel | stage`: the whole pipeline, locally or on SLURM.

    empo run CONFIG [KEY=VALUE...] [--executor local|debug|slurm] [--force-new]
    empo submit CONFIG [KEY=VALUE...] [--force-new]
    empo status RESULTS_DIR [--json] [--watch [SECONDS]]
    empo logs RESULTS_DIR STAGE [--err] [-f]
    empo cancel RESULTS_DIR
    empo stage STAGE CONFIG [KEY=VALUE...] --variant V --seed S
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from empo.commands.common import add_config_args, load_experiment
from empo.commands.fetch import add_preflight_args
from empo.config import EXPERIMENT_FILE, read_experiment
from empo.errors import LaunchError
from empo.launch.cost import experiment_cost
from empo.launch.manifest import read_manifest
from empo.launch.orphans import settle_orphans, with_orphans
from empo.stages import REGISTRY, default_variant, evaluation_kinds
from empo.store import claim_experiment_dir
from empo.validate import check_positive_int as positive_int, check_seed

FORCE_NEW_HELP = ("move an existing results/<name> aside whole to results/<name>.<YYYYmmdd-"
                  "HHMMSS> (nothing is deleted) and start afresh")


def stage_choices() -> tuple[str, ...]:
    """What `empo stage` runs: a registered stage kind (not share), or `eval` (generate + the
    metrics, as one job does)."""
    return tuple(k for k in REGISTRY if k != "share") + ("eval",)


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the whole graph (baseline, SFT, DPO, evals, aggregate) "
                         "and wait; prints the table")
    add_config_args(run)
    add_preflight_args(run)
    run.add_argument("--executor", default=None,
                     help="local (default: a process per job here), debug (in this process), "
                     "slurm (queue and wait); default: cluster.executor")
    run.add_argument("--force-new", action="store_true", help=FORCE_NEW_HELP)
    run.add_argument("--parallel", type=positive_int, default=None,
                     help="local jobs at once (default: cores / cluster.cpus_per_task)")
    run.set_defaults(handler=_run)

    submit = sub.add_parser("submit", help="queue the graph on SLURM (afterok deps, arrays over "
                            "seeds), write manifest.json, print the job table and return; always "
                            "SLURM, whatever cluster.executor says (empo run follows it)")
    add_config_args(submit)
    add_preflight_args(submit)
    submit.add_argument("--dry-run", action="store_true",
                        help="write each job's sbatch script to results/<name>/dry-run/, check it "
                        "with `sbatch --test-only`, print the job table; queue nothing")
    submit.add_argument("--force-new", action="store_true", help=FORCE_NEW_HELP)
    submit.set_defaults(handler=_submit)

    status = sub.add_parser("status", help="per stage: state, job, elapsed, node, the SLURM "
                            "reason or exception, the stage at fault, log, GPU-/CPU-hours "
                            "(also written to results/<name>/cost.csv)")
    status.add_argument("results_dir", type=Path, help="results/<experiment>")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--watch", type=float, nargs="?", const=10.0, default=None,
                        metavar="SECONDS", help="refresh every SECONDS (default 10) until no "
                        "stage is pending or running (Ctrl-C stops)")
    status.set_defaults(handler=_status)

    logs = sub.add_parser("logs", help="print the log of a stage's current job")
    logs.add_argument("results_dir", type=Path, help="results/<experiment>")
    logs.add_argument("stage", help="a stage key as `empo status` lists it (sft/sft/seed-1, "
                      "aggregate) or the start of one")
    logs.add_argument("--err", action="store_true", help="the job's stderr (stage logs, "
                      "tracebacks) instead of its stdout")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing while the job is pending or running")
    logs.set_defaults(handler=_logs)

    cancel = sub.add_parser("cancel", help="cancel every unfinished job of an experiment")
    cancel.add_argument("results_dir", type=Path, help="results/<experiment>")
    cancel.set_defaults(handler=_cancel)

    stage = sub.add_parser("stage", help="run one stage in this process (used by jobs/*.sbatch)")
    stage.add_argument("stage", help=f"one of: {', '.join(stage_choices())} "
                       "(eval = generate + metrics)")
    add_config_args(stage)
    stage.add_argument("--variant", default=None,
                       help="baseline, sft, sft_dpo or a sweep point (default: sft for sft, "
                       "sft_dpo for dpo)")
    stage.add_argument("--seed", type=check_seed, default=None, help="one of the config's seeds")
    stage.set_defaults(handler=_stage)


def _run(args: argparse.Namespace) -> int:
    from empo.launch.run import run_experiment

    cfg = load_experiment(args, ensure_assets=False)
    executor = args.executor or cfg.cluster.executor
    outcome = run_experiment(cfg, executor, force_new=args.force_new, parallel=args.parallel,
                             preflight=not args.no_preflight)
    if outcome.moved_aside:
        print(f"empo: moved the old results aside to {outcome.moved_aside}", file=sys.stderr)
    if (cfg.experiment_dir / "table.md").exists():
        sys.stderr.flush()
        print()  # the table starts on its own line, under the live status table
        _print_table(cfg.experiment_dir)
        _print_paths(cfg.experiment_dir, outcome.cost)
    if outcome.failed:
        lines = [f"  {s.key}: {s.state}" + (f" ({s.reason})" if s.reason else "")
                 + (f"\n    log: {s.log}" if s.state == "failed" and s.log else "")
                 for s in outcome.failed]
        print("empo: not every stage finished:\n" + "\n".join(lines), file=sys.stderr)
        return 1
    return 0


def _print_table(experiment_dir: Path) -> None:
    table = experiment_dir / "table.md"
    if table.exists():
        sys.stdout.write(table.read_text())
        sys.stdout.flush()


def _print_paths(experiment_dir: Path, cost: Path | None) -> None:
    """Where the results are: table.csv, cost.csv, the plots."""
    table = experiment_dir / "table.csv"
    plots = sorted((experiment_dir / "plots").glob("*.png"))
    lines = ([f"table: {table}"] if table.exists() else []) + \
        ([f"cost:  {cost}"] if cost else []) + [f"plot:  {p}" for p in plots]
    if lines:
        print("\n" + "\n".join(lines))


def _submit(args: argparse.Namespace) -> int:
    from rich.table import Table

    from empo.launch.run import submit_experiment
    from empo.launch.status import console

    cfg = load_experiment(args, ensure_assets=False)
    if args.dry_run:
        from empo.launch.dryrun import print_dry_run

        return print_dry_run(cfg, check=not args.no_preflight)
    graph, entries, moved = submit_experiment(cfg, force_new=args.force_new,
                                              preflight=not args.no_preflight)
    if moved:
        print(f"empo: moved the old results aside to {moved}", file=sys.stderr)
    if not entries:
        waiting = len(graph.pending())
        print(f"{cfg.experiment_dir}: nothing submitted: " + (
            f"{waiting} unfinished stage(s) are already queued or running (empo status)"
            if waiting else "every stage is done"))
        _print_table(cfg.experiment_dir)
        return 0
    table = Table(title=f"{cfg.name}: {len(set(e['job_id'] for e in entries.values()))} jobs "
                  f"queued ({cfg.experiment_dir / 'manifest.json'})", title_justify="left")
    for column in ("stage", "job", "log"):
        table.add_column(column, overflow="fold")
    for stage in graph:
        if stage.key in entries:
            table.add_row(stage.key, entries[stage.key]["job_id"], entries[stage.key]["stderr"])
    console().print(table)
    return 0


def _experiment(results_dir: Path):
    from empo.pipeline import build_graph

    cfg = read_experiment(results_dir)
    if cfg is None:
        raise LaunchError(f"{results_dir}: no {EXPERIMENT_FILE} (expected results/<experiment> "
                          "written by empo run, empo submit or empo job sbatch; a plain sbatch "
                          "of jobs/*.sbatch writes it only when its job starts)")
    claim_experiment_dir(results_dir, create=False)  # status writes cost.csv: EmPO's dirs only
    # The stored config names results/<name>; the directory given is where it is now.
    cfg.results_dir, cfg.name = str(results_dir.resolve().parent), results_dir.resolve().name
    return cfg, build_graph(cfg)


def _status(args: argparse.Namespace) -> int:
    from empo.launch.status import console, experiment_report, render, summary

    if args.watch is not None and not 0.5 <= args.watch <= 86400:
        raise LaunchError(f"--watch {args.watch:g}: refresh interval must be 0.5..86400 seconds")
    cfg, graph = _experiment(args.results_dir)
    while True:
        statuses, details = experiment_report(graph, with_orphans(read_manifest(cfg.experiment_dir)))
        experiment_cost(graph, statuses, details)
        if args.json:
            print(json.dumps([s.to_dict() for s in statuses], indent=2), flush=True)
        else:
            if args.watch is not None and sys.stdout.isatty():
                print("\033[2J\033[H", end="")  # clear the terminal between refreshes
            console().print(render(statuses, title=f"{cfg.name}: {summary(statuses)}"))
        if args.watch is None or not any(s.state in ("running", "pending") for s in statuses):
            return 0
        time.sleep(args.watch)


def _logs(args: argparse.Namespace) -> int:
    from empo.launch.logs import show_log

    cfg, graph = _experiment(args.results_dir)
    show_log(graph, read_manifest(cfg.experiment_dir), args.stage, err=args.err,
             follow=args.follow)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from empo.launch.status import cancel

    cfg, graph = _experiment(args.results_dir)
    orphans = settle_orphans(cfg.experiment_dir, graph, adopt=False)  # of a killed submission
    cancelled = sorted({*orphans, *cancel(graph, read_manifest(cfg.experiment_dir),
                                          cfg.experiment_dir)})
    print(f"cancelled {len(cancelled)} job(s)" + (f": {' '.join(cancelled)}" if cancelled else ""))
    return 0


def _stage(args: argparse.Namespace) -> int:
    from empo.launch.experiment import write_experiment
    from empo.pipeline import build_graph, stage_call

    if args.stage not in stage_choices():
        raise LaunchError(f"unknown stage {args.stage!r}; allowed: {', '.join(stage_choices())}")
    cfg = load_experiment(args)
    stages = select_stages(build_graph(cfg), args.stage, args.variant, args.seed, cfg.seeds)
    write_experiment(cfg)
    outcome = stage_call(stages)()
    for key, what in outcome.items():
        print(f"{key}: {what}")
    return 0


def select_stages(graph, stage: str, variant: str | None, seed: int | None, seeds: list[int]):
    """The stages `empo stage` runs, after checking that what they read is done."""
    from empo.pipeline import Variant, eval_stages

    if stage == "aggregate":
        selected = [graph.stages["aggregate"]] if "aggregate" in graph.stages else []
        if not selected:
            raise LaunchError("this experiment evaluates nothing (eval.metrics is empty)")
    else:
        variant = variant or default_variant(stage)
        if variant is None:
            raise LaunchError(f"empo stage {stage}: --variant is required "
                              f"(one of: {', '.join(v.name for v in graph.variants)})")
        if seed is None:
            if len(seeds) != 1:
                raise LaunchError(f"empo stage {stage}: --seed is required (one of "
                                  f"{', '.join(map(str, seeds))})")
            seed = seeds[0]
        kinds = evaluation_kinds() if stage == "eval" else (stage,)
        share = graph.stages.get(f"share/{variant}/seed-{seed}")
        if share is not None and stage in (*evaluation_kinds(), "eval"):
            if all(graph.stages[d].is_done() for d in share.deps):
                selected = [share]
            else:  # the first seed's baseline is not evaluated yet: evaluate this seed itself
                baseline = Variant("baseline", "baseline", share.config)
                selected = [s for s in eval_stages(baseline, seed, share.directory, (), None)
                            if s.kind in kinds]
        else:
            selected = [s for s in graph if s.kind in kinds and s.variant == variant
                        and s.seed == seed]
            if not selected:
                graph.select(kinds[0], variant, seed)  # raises, listing what exists
    keys = {s.key for s in selected}
    missing = [d for s in selected for d in s.deps if d not in keys and not graph.stages[d].is_done()]
    if missing:
        raise LaunchError(f"empo stage {stage}: needs {', '.join(dict.fromkeys(missing))} first "
                          "(its DONE marker is missing)")
    return selected
