"""`empo fetch CONFIG [--cache DIR]`: stage an experiment's models and data for offline nodes."""
from __future__ import annotations

import argparse
import sys

from rich.table import Table

from empo.commands.common import add_config_args, load_experiment
from empo.evaluate.epitome_layout import PUBLISHED_SHA256
from empo.fetch import fetch, human
from empo.launch.preflight import PreflightError, Problem


def register(sub: argparse._SubParsersAction) -> None:
    fetch = sub.add_parser(
        "fetch", help="download every model, dataset and lm-eval task an experiment reads into "
        "the Hugging Face cache (run where the Hub is reachable, e.g. a login node); check the "
        "local ones and the EPITOME checkpoints; print asset, size, where, state")
    add_config_args(fetch)
    fetch.add_argument("--cache", default=None,
                       help="the cache (HF_HOME) to fill; default: cluster.hf_home, else $HF_HOME, "
                       "else ~/.cache/huggingface. Jobs read it when cluster.hf_home names it")
    fetch.set_defaults(handler=_fetch)


def add_preflight_args(parser: argparse.ArgumentParser) -> None:
    """--no-preflight for `empo run` / `empo submit`."""
    parser.add_argument("--no-preflight", action="store_true",
                        help="skip the checks made before anything is queued (assets, EPITOME "
                        "checkpoints, lm-eval tasks, image, partition/account/qos/gres/time, "
                        "planned GPU memory)")


def _fetch(args: argparse.Namespace) -> int:
    from empo.launch.status import console

    cfg = load_experiment(args)
    rows, record = fetch(cfg, args.cache)
    table = Table(title=f"{cfg.name}: assets ({record})", title_justify="left")
    for column in ("key", "asset", "size", "where", "state"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row.key, row.asset, human(row.size), row.where, row.state)
    console().print(table)
    for row in rows:
        for name, digest in (row.sha256 or {}).items():
            published = PUBLISHED_SHA256.get(name)
            note = "" if published is None else (
                "  (= the published sha256)" if digest == published else
                f"  (differs from the published {published[:12]}…)")
            print(f"sha256 {digest}  {row.where}/{name}{note}")
    missing = [Problem(r.key, f"{r.asset} {r.state}", r.how) for r in rows if not r.ok]
    if missing:
        raise PreflightError(missing, what="the others are staged")
    print(f"all {len(rows)} assets are in place; jobs with cluster.offline (default on SLURM) read "
          f"them without the Hub", file=sys.stderr)
    return 0
