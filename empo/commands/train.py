"""`empo train sft|dpo` (one training stage for one seed) and `empo plan` (memory planner)."""
from __future__ import annotations

import argparse

from empo.commands.common import add_config_args, load_experiment


def register(sub: argparse._SubParsersAction) -> None:
    """Add `train` (with `sft`, `dpo`) and `plan`."""
    train = sub.add_parser("train", help="run one training stage (SFT or DPO) for one seed",
                           description="Train one stage into results/<name>/runs/<variant>/seed-<s>/; "
                           "resumes from the last checkpoint; a finished stage (DONE) is left as is.")
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    sft = stages.add_parser("sft", help="LoRA SFT on whole dialogues (loss on listener turns)")
    add_config_args(sft)
    sft.add_argument("--seed", type=int, required=True, help="run seed")
    sft.set_defaults(handler=_train_sft)
    dpo = stages.add_parser("dpo", help="DPO from the SFT adapter of the same seed")
    add_config_args(dpo)
    dpo.add_argument("--seed", type=int, required=True, help="run seed (its SFT adapter must be done)")
    dpo.set_defaults(handler=_train_dpo)

    plan = sub.add_parser("plan", help="parameters and per-GPU memory of a stage, no weights loaded",
                          description="Trainable LoRA parameters and per-GPU memory (DeepSpeed "
                          "estimators + activations + DPO reference) with a verdict against "
                          "cluster.gpu_memory_gb.")
    add_config_args(plan)
    plan.add_argument("--stage", choices=("sft", "dpo"), default="sft")
    plan.add_argument("--gpus", type=int, default=None, help="GPUs per node (default: cluster.gpus_per_node)")
    plan.add_argument("--nodes", type=int, default=None, help="nodes (default: cluster.nodes)")
    plan.set_defaults(handler=_plan)


def _train_sft(args: argparse.Namespace) -> int:
    from empo.results.store import run_dir
    from empo.train.sft import train_sft

    cfg = load_experiment(args)
    adapter = train_sft(cfg, args.seed, run_dir(cfg.experiment_dir, "sft", args.seed))
    print(adapter)
    return 0


def _train_dpo(args: argparse.Namespace) -> int:
    from empo.errors import TrainError
    from empo.results.store import is_done, run_dir

    cfg = load_experiment(args)
    sft_dir = run_dir(cfg.experiment_dir, "sft", args.seed)
    sft_adapter = sft_dir / "adapter"
    if not is_done(sft_dir) or not (sft_adapter / "adapter_config.json").is_file():
        raise TrainError(f"SFT adapter {sft_adapter} is missing or unfinished: run "
                         f"`empo train sft {args.config} --seed {args.seed}` first")
    from empo.train.dpo import train_dpo

    adapter = train_dpo(cfg, args.seed, run_dir(cfg.experiment_dir, "sft_dpo", args.seed), sft_adapter)
    print(adapter)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from empo.plan import plan_text

    cfg = load_experiment(args)
    print(plan_text(cfg, args.stage, args.gpus, args.nodes))
    return 0
