"""The `empo` command: parses arguments and calls the layers below; no heavy imports here."""
from __future__ import annotations

import argparse
import logging
import sys
import typing
from collections.abc import Sequence

from empo.commands import (assets, config, data, epitome, eval as eval_, fetch, jobs, launch,
                           results, train)
from empo.errors import EmpoError

COMMAND_GROUPS = (config, assets, fetch, data, train, eval_, epitome, results, launch, jobs)


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (the command's --help has the rest), exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="empo",
        description="EmPO: theory-driven preference data, SFT + DPO training and evaluation "
        "of empathetic response generation, locally or on SLURM.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or 0)
    except (EmpoError, OSError, UnicodeError) as err:
        if args.debug:
            raise
        print(f"empo: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("empo: interrupted", file=sys.stderr)
        return 130


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Options and KEY=VALUE overrides in any order (`--seed 1 lora.r=8` as well)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
            args.overrides = list(args.overrides or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def one_line(err: BaseException) -> str:
    """The error as one line naming the file where the OS names one."""
    if getattr(err, "problems", None):  # preflight: one line per problem, under a headline
        first, *rest = str(err).splitlines()
        return "\n".join([" ".join(first.split())] + ["  " + " ".join(x.split()) for x in rest])
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or err}"
    elif isinstance(err, UnicodeDecodeError):
        text = f"input is not UTF-8 text ({err.reason} at byte {err.start})"
    else:
        text = str(err)
    return " ".join(text.split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
