"""`empo data stats|sft|eval|preference`: inspect EmpatheticDialogues and export JSONL datasets.

SRC is a raw ED CSV directory (train/valid/test.csv), a message-form file or directory
(.jsonl/.json/.parquet), or a Hub dataset id in message form. Exports are written atomically.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from empo.data.chat import eligible, eval_example, message_row, sft_example
from empo.data.ed import load_dialogues
from empo.data.emotions import default_table_path, load_table
from empo.data.preference import check_arguments, write_preference_jsonl
from empo.errors import DataError
from empo.store import atomic_write_jsonl, check_output
from empo.validate import check_seed

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="EmpatheticDialogues stats and JSONL exports")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    stats = actions.add_parser("stats", help="per split: dialogues, utterances, malformed rows "
                               "dropped, eligible dialogues, per-emotion counts")
    _source(stats)
    stats.add_argument("--splits", default="train,valid,test",
                       help="comma-separated splits to report (default: train,valid,test)")
    stats.add_argument("--table", type=Path, default=None,
                       help="also check this emotion table against each split")
    stats.add_argument("--json", action="store_true", help="print JSON instead of tables")
    stats.set_defaults(handler=_stats)

    sft = actions.add_parser("sft", help="SFT examples: conv_id, emotion, messages")
    _export_args(sft, "train")
    sft.set_defaults(handler=_sft)

    msgs = actions.add_parser("messages", help="the split in message form (conv_id, situation, "
                              "emotion, conversations: the Hub mirror's layout), cleaned")
    _export_args(msgs, "train")
    msgs.set_defaults(handler=_messages)

    eval_ = actions.add_parser("eval", help="eval examples: conv_id, emotion, prompt, seeker, "
                               "reference")
    _export_args(eval_, "test")
    eval_.set_defaults(handler=_eval)

    pref = actions.add_parser("preference", help="theory-driven preference pairs (trl's "
                              "conversational format), one fresh draw per epoch")
    _export_args(pref, "train")
    pref.add_argument("--epochs", type=int, default=3, help="epochs 0..E-1 (paper: 3)")
    pref.add_argument("--seed", type=check_seed, default=0, help="draws of epoch k seeded by (seed, k)")
    pref.add_argument("--table", type=Path, default=None,
                      help="emotion table TSV (default: paper Table 2, empo:emotions/plutchik.tsv)")
    pref.add_argument("--sampling", choices=("balanced", "uniform"), default="balanced",
                      help="balanced: without replacement, cycling the opposite group; "
                      "uniform: with replacement")
    pref.set_defaults(handler=_preference)


def _source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, metavar="SRC",
                        help="raw ED directory, message-form file/dir, or Hub dataset id")
    parser.add_argument("--revision", default=None,
                        help="Hub dataset revision (commit, tag or branch; data.revision)")


def _export_args(parser: argparse.ArgumentParser, split: str) -> None:
    _source(parser)
    parser.add_argument("--split", default=split, help=f"split to export (default: {split})")
    parser.add_argument("--out", required=True, type=Path, help="output JSONL file")
    parser.add_argument("--system-prompt", default=None, metavar="TEXT",
                        help="system message put before every prompt (default: none)")


def _check_out(args: argparse.Namespace) -> None:
    """Fail before any loading when the output cannot be written or would replace an input."""
    check_output(args.out, [args.source, getattr(args, "table", None)])


def _load(args: argparse.Namespace) -> Any:
    result = load_dialogues(args.source, args.split, args.revision)
    log.info("%s [%s]: %d dialogues, %d utterances, %d malformed rows dropped",
             result.path, args.split, len(result.dialogues), result.utterances, result.malformed)
    return result


def _sft(args: argparse.Namespace) -> int:
    return _export(args, sft_example, "SFT examples")


def _eval(args: argparse.Namespace) -> int:
    return _export(args, eval_example, "eval examples")


def _export(args: argparse.Namespace, example: Callable[..., dict], what: str) -> int:
    """One JSONL row per eligible dialogue of the split, written atomically."""
    _check_out(args)
    result = _load(args)
    rows = [example(d, args.system_prompt) for d in eligible(result.dialogues)]
    if not rows:
        raise DataError(f"{result.path}: split '{args.split}' has no eligible dialogues "
                        "(at least 2 turns); nothing written")
    count = atomic_write_jsonl(args.out, rows)
    print(f"{args.out}: {count} {what}")
    return 0


def _messages(args: argparse.Namespace) -> int:
    return _export(args, message_row, "dialogues in message form")


def _preference(args: argparse.Namespace) -> int:
    _check_out(args)
    check_arguments(args.epochs, args.sampling, args.seed)
    table = load_table(args.table or default_table_path())
    result = _load(args)
    count = write_preference_jsonl(args.out, result.columns, table, args.epochs, args.seed,
                                   args.sampling, args.system_prompt,
                                   where=f"split '{args.split}' of {result.path}")
    print(f"{args.out}: {count} preference pairs ({args.epochs} epochs, {args.sampling}, "
          f"seed {args.seed})")
    return 0


def split_stats(result: Any, table: Any = None) -> dict[str, Any]:
    """The numbers `empo data stats` reports for one loaded split."""
    usable = eligible(result.dialogues)
    counts = Counter(d.emotion for d in usable)
    everything = Counter(d.emotion for d in result.dialogues)
    stats: dict[str, Any] = {
        "path": result.path, "dialogues": len(result.dialogues), "utterances": result.utterances,
        "malformed_rows_dropped": result.malformed, "turns_dropped": result.dropped_turns,
        "eligible_dialogues": len(usable),
        "emotions": {e: {"dialogues": everything[e], "eligible": counts.get(e, 0)}
                     for e in sorted(everything)},
    }
    if table is not None:
        for label, entry in stats["emotions"].items():
            entry["opposite"] = table.pairs[label].opposite if label in table else None
        stats["table"] = table.path
        stats["table_problems"] = table.problems(counts)
    return stats


def _stats(args: argparse.Namespace) -> int:
    table = load_table(args.table) if args.table else None
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    report = {split: split_stats(load_dialogues(args.source, split, args.revision), table)
              for split in splits}
    if args.json:
        json.dump({"source": args.source, "revision": args.revision, "splits": report},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(_format_stats(args.source, args.revision, report))
    return 0


def _format_stats(source: str, revision: str | None, report: dict[str, dict[str, Any]]) -> str:
    out = [f"source: {source}" + (f" (revision {revision})" if revision else "")]
    for split, s in report.items():
        out += ["", f"== {split} ({s['path']})",
                f"dialogues {s['dialogues']}  utterances {s['utterances']}  malformed rows "
                f"dropped {s['malformed_rows_dropped']}  turns dropped {s['turns_dropped']}  "
                f"eligible dialogues {s['eligible_dialogues']}"]
        with_table = "table" in s
        head = f"{'emotion':<14} {'dialogues':>9} {'eligible':>8}"
        out.append(head + ("  opposite" if with_table else ""))
        for label, e in s["emotions"].items():
            line = f"{label:<14} {e['dialogues']:>9} {e['eligible']:>8}"
            if with_table:
                line += f"  {e['opposite'] or '-':<14}"
            out.append(line.rstrip())
        if with_table:
            problems = s["table_problems"]
            out.append(f"table {s['table']}: " + ("fits this split" if not problems else
                                                   f"{len(problems)} problem(s)"))
            out += [f"  - {p}" for p in problems]
    return "\n".join(out) + "\n"
