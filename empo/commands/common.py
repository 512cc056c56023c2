"""Helpers shared by command groups: loading an experiment config the way every command does,
and command-line options made from a config section (one place for each default)."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from empo.assets import ensure_tiny_assets
from empo.config import ExperimentConfig, build_section, load_config, parse_override
from empo.validate import field_metadata


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """CONFIG [OVERRIDES...] positional arguments."""
    parser.add_argument("config", help="experiment YAML (configs/experiments/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", default=[],
                        help="dotted overrides, e.g. lora.r=512 seeds=[1,2]")


def load_experiment(args: argparse.Namespace, ensure_assets: bool = True) -> ExperimentConfig:
    """The validated config; tiny offline assets it names are created on first use."""
    cfg = load_config(args.config, args.overrides)
    if ensure_assets and cfg.assets:
        ensure_tiny_assets(cfg.resolve(cfg.assets))
    return cfg


def add_section_options(parser: argparse.ArgumentParser, cls: type, prefix: str,
                        skip: tuple[str, ...] = ()) -> None:
    """`--field-name` for each field of the config section `cls` (e.g. `eval.generation`):
    the section's default, its config key and metadata["help"] as help; values are checked by
    `section_from_args`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{prefix}.{f.name}: {field_metadata(cls, f.name, 'help')} (default: {default})"
        if hints[f.name] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=help_)
        elif typing.get_origin(hints[f.name]) is list:
            parser.add_argument(flag, nargs="+", default=default, help=help_)
        else:
            parser.add_argument(flag, default=default, help=help_, metavar="VALUE")


def section_from_args(args: argparse.Namespace, cls: type, prefix: str,
                      skip: tuple[str, ...] = ()) -> Any:
    """The section built from the parsed options and validated like the config's own (types,
    ranges: `--batch-size 0` is refused as `eval.generation.batch_size` would be)."""
    raw = {f.name: _yaml_value(getattr(args, f.name)) for f in dataclasses.fields(cls)
           if f.name not in skip}
    return build_section(cls, raw, prefix)


def _yaml_value(value: Any) -> Any:
    """Command-line text read as YAML scalars ('5' -> 5, 'null' -> None), like overrides."""
    if isinstance(value, str):
        return parse_override(f"x={value}")[1]
    return value
