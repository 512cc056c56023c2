"""`empo config show|validate`: print or check a resolved experiment config."""
from __future__ import annotations

import argparse
import sys

from empo.commands.common import add_config_args, load_experiment
from empo.launch import check_executor
from empo.launch.preflight import check_preflight


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="show or validate an experiment config")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the resolved YAML and its hash")
    add_config_args(show)
    show.set_defaults(handler=_show)
    validate = actions.add_parser("validate", help="exit 0 if the config is valid, 2 if not")
    add_config_args(validate)
    validate.add_argument("--preflight", action="store_true",
                          help="also run the checks `empo run`/`submit` make before queueing "
                          "(assets, checkpoints, lm-eval tasks, image, cluster limits, memory)")
    validate.add_argument("--executor", default=None,
                          help="with --preflight: the executor to check for (default: "
                          "cluster.executor)")
    validate.set_defaults(handler=_validate)


def _show(args: argparse.Namespace) -> int:
    cfg = load_experiment(args, ensure_assets=False)
    sys.stdout.write(f"# config hash: {cfg.config_hash()}\n{cfg.to_yaml()}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    cfg = load_experiment(args, ensure_assets=args.preflight)
    if args.preflight:
        check_preflight(cfg, check_executor(args.executor or cfg.cluster.executor))
        print(f"{args.config}: preflight passed")
    print(f"{args.config}: valid (hash {cfg.config_hash()})")
    return 0
