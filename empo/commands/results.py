"""`empo aggregate RESULTS_DIR` and `empo plot RESULTS_DIR`: a run store's table and figures."""
from __future__ import annotations

import argparse
from pathlib import Path

from empo.results.aggregate import aggregate
from empo.results.compare import read_table_csv
from empo.results.plots import plot
from empo.store import claim_experiment_dir


def register(sub: argparse._SubParsersAction) -> None:
    """Add `aggregate` and `plot`."""
    agg = sub.add_parser(
        "aggregate", help="mean ± SD over seeds of every variant: table.csv/md/tex",
        description="Read RESULTS_DIR/runs/<variant>/seed-<s>/metrics.json and write table.csv, "
        "table.md and table.tex (the paper's Table 1 layout) into RESULTS_DIR; print the Markdown.")
    agg.add_argument("results_dir", type=Path, metavar="RESULTS_DIR",
                     help="the experiment's run store, results/<experiment>")
    agg.add_argument("--skip-bad", action="store_true",
                     help="skip malformed metrics.json files (listed on stderr) instead of failing")
    agg.add_argument("--compare", type=Path, metavar="PAPER.csv",
                     help="also compare with a reference table (e.g. results/paper/table1.csv): "
                     "writes compare.csv and compare.md")
    agg.set_defaults(handler=_aggregate)
    plot = sub.add_parser(
        "plot", help="the paper's figures and training curves: RESULTS_DIR/plots/*.png + CSV",
        description="Write Fig. 1 (MMLU vs LoRA α), Fig. 2 (diff-EPITOME vs r), Fig. 3 (spread of "
        "diff-EPITOME vs DPO β) for the sweeps the experiment has, and training curves, as PNGs "
        "with their data as CSVs under RESULTS_DIR/plots/.")
    plot.add_argument("results_dir", type=Path, metavar="RESULTS_DIR",
                      help="the experiment's run store, results/<experiment>")
    plot.add_argument("--skip-bad", action="store_true",
                      help="skip malformed metrics.json files (listed on stderr)")
    plot.set_defaults(handler=_plot)


def _aggregate(args: argparse.Namespace) -> int:
    if args.compare is not None:
        read_table_csv(args.compare)  # a bad reference fails before anything is written
    claim_experiment_dir(args.results_dir, create=False)  # tables go only into EmPO's directory
    table = aggregate(args.results_dir, skip_bad=args.skip_bad, compare=args.compare)
    print(table.with_name("table.md").read_text(), end="")
    if args.compare is not None:
        print()
        print(table.with_name("compare.md").read_text(), end="")
    return 0


def _plot(args: argparse.Namespace) -> int:
    claim_experiment_dir(args.results_dir, create=False)  # plots go only into EmPO's directory
    for path in plot(args.results_dir, skip_bad=args.skip_bad):
        print(path)
    return 0
