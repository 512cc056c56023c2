"""`empo assets tiny --out DIR`: the offline assets for the embedded default and the tests."""
from __future__ import annotations

import argparse
from pathlib import Path

from empo.assets import ensure_tiny_assets


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("assets", help="make offline assets")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    tiny = actions.add_parser("tiny", help="tiny Mistral + tokenizer, ED-format corpus, eval assets")
    tiny.add_argument("--out", required=True, type=Path, help="directory to create")
    tiny.set_defaults(handler=_tiny)


def _tiny(args: argparse.Namespace) -> int:
    path = ensure_tiny_assets(args.out)
    print(path)
    return 0
