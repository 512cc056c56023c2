"""The `empo` command: parses arguments and calls the layers below; no heavy imports here."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from empo.commands import assets, config, data, eval as eval_, jobs, launch, results, train
from empo.errors import EmpoError

COMMAND_GROUPS = (config, assets, data, train, eval_, results, launch, jobs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or 0)
    except EmpoError as err:
        if args.debug:
            raise
        print(f"empo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("empo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
