"""`empo train KIND` (one training stage for one seed; KIND: sft, dpo, ... as `empo.stages`
declares them) and `empo plan` (memory planner)."""
from __future__ import annotations

import argparse
import sys

from empo.commands.common import add_config_args, load_experiment
from empo.errors import EmpoError, TrainError
from empo.hub import offline_unless_reachable
from empo.stages import REGISTRY, memory_plan, training_kinds
from empo.train.memory import checkpoint_plan, format_plan
from empo.validate import check_positive_int, check_seed


def register(sub: argparse._SubParsersAction) -> None:
    """Add `train` (a subcommand per training stage) and `plan`."""
    train = sub.add_parser("train", help="run one training stage (SFT, DPO, ...) for one seed",
                           description="Train one stage into results/<name>/runs/<variant>/seed-<s>/; "
                           "resumes from the last checkpoint; a finished stage (DONE) is left as is.")
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for kind in training_kinds():
        entry = REGISTRY[kind]
        start = f" (its {entry.starts_from} adapter must be done)" if entry.starts_from else ""
        parser = stages.add_parser(kind, help=entry.help)
        add_config_args(parser)
        parser.add_argument("--seed", type=check_seed, required=True, help=f"run seed{start}")
        parser.set_defaults(handler=_train)

    plan = sub.add_parser("plan", help="parameters and per-GPU memory of a stage, no weights loaded",
                          description="Trainable LoRA parameters and per-GPU memory (DeepSpeed "
                          "estimators + activations + DPO reference) with a verdict against "
                          "cluster.gpu_memory_gb.")
    add_config_args(plan)
    plan.add_argument("--stage", choices=training_kinds(), default=training_kinds()[0])
    plan.add_argument("--gpus", type=check_positive_int, default=None, help="GPUs per node (default: cluster.gpus_per_node)")
    plan.add_argument("--nodes", type=check_positive_int, default=None, help="nodes (default: cluster.nodes)")
    plan.add_argument("--throughput", type=_positive_float, default=None, metavar="TOKENS_PER_S",
                      help="measured SFT training tokens per GPU-second for the GPU-hours estimate "
                      "(default: 6N FLOPs/token at 35%% of an A100's bf16 peak; see empo/estimate.py)")
    plan.set_defaults(handler=_plan)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1e12:
        raise argparse.ArgumentTypeError(f"{text}: must be > 0")
    return value


def _train(args: argparse.Namespace) -> int:
    """One training stage of the graph, under its lock; what it reads must be done and valid."""
    from empo.pipeline import build_graph

    entry = REGISTRY[args.stage]
    cfg = load_experiment(args)
    # any seed (seeds are directories, not part of the config's identity); with dpo.sft_seed the
    # SFT run every DPO run continues is in the graph too
    cfg.seeds = sorted({args.seed, cfg.dpo.sft_seed} - {None})
    if entry.variant not in cfg.variants:  # a stage of a variant the experiment does not list
        cfg.variants = [*cfg.variants, entry.variant]
    graph = build_graph(cfg)
    stage = graph.select(args.stage, entry.variant, args.seed)
    for dep in stage.deps:
        before = graph.stages[dep]
        if not before.is_done():
            found = before.output_problem()
            why = found[1] if found else f"{before.directory} is unfinished"
            raise TrainError(f"{entry.starts_from.upper()} adapter {stage.adapter} is missing or "
                             f"unusable ({why}): run `empo train {entry.starts_from} "
                             f"{args.config} --seed {before.seed}` first")
    stage.run()
    print(stage.directory / "adapter")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from empo.estimate import estimate, estimate_text

    cfg = load_experiment(args)
    offline = offline_unless_reachable()  # once, before any Hub client: no retries on every file
    plan = memory_plan(cfg, args.stage, args.gpus, args.nodes)
    if offline:  # said after the plan, so a bad input stays one line
        print("empo plan: the Hub is not reachable from here: models and data were read from the "
              "cache only", file=sys.stderr)
    print(format_plan(plan, cfg.name))
    print(checkpoint_plan(cfg, plan).text())
    if args.stage == "dpo":
        print(f"seed structure: {cfg.dpo.seed_structure(cfg.seeds)}")

    try:
        print(estimate_text(estimate(cfg, args.throughput)))
    except (EmpoError, OSError) as err:  # e.g. the data is not reachable from here
        print(f"compute estimate: unavailable ({' '.join(str(err).split())})")
    return 0
