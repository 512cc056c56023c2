"""Helpers shared by command groups: loading an experiment config the way every command does."""
from __future__ import annotations

import argparse

from empo.config import ExperimentConfig, load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """CONFIG [OVERRIDES...] positional arguments."""
    parser.add_argument("config", help="experiment YAML (configs/experiments/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. lora.r=512 seeds=[1,2]")


def load_experiment(args: argparse.Namespace, ensure_assets: bool = True) -> ExperimentConfig:
    """The validated config; tiny offline assets it names are created on first use."""
    cfg = load_config(args.config, args.overrides)
    if ensure_assets and cfg.assets:
        from empo.assets import ensure_tiny_assets

        ensure_tiny_assets(cfg.resolve(cfg.assets))
    return cfg
