"""`empo epitome train`: the three EPITOME classifiers from the Reddit annotations (DESIGN §4)."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from empo.evaluate.epitome_data import Recipe


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's subcommands."""
    parser = sub.add_parser("epitome", help="train the EPITOME classifiers diff-EPITOME uses")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser(
        "train", help="train ER, EX, IP with the original recipe (Sharma et al., 2020)",
        description="Writes finetuned_ER.pth, finetuned_EX.pth, finetuned_IP.pth (the published "
        "layout, for `empo eval epitome --checkpoints OUT`) and report.json (test accuracy, "
        "macro-F1, confusion matrices, where to compare them) into a new directory OUT.")
    train.add_argument("--data", required=True, type=Path,
                       help="directory with emotional-reactions-reddit.csv, "
                            "explorations-reddit.csv, interpretations-reddit.csv")
    train.add_argument("--encoder", default="roberta-base",
                       help="pretrained RoBERTa (Hub id or local directory)")
    train.add_argument("--tokenizer", help="tokenizer (default: --encoder)")
    train.add_argument("--out", required=True, type=Path, help="new output directory")
    train.add_argument("--seed", type=int, default=12,
                       help="split and training seed (default 12, src/train.py's seed_val)")
    train.add_argument("--epochs", type=int, help="epochs (default 4, the recipe's)")
    train.add_argument("--max-steps", type=int, help="stop each classifier after N optimizer "
                       "steps (quick checks; not the recipe)")
    train.add_argument("--device", help="torch device (default: cuda when available)")
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from empo.evaluate.epitome_train import train_classifiers

    changes = {"epochs": args.epochs, "max_steps": args.max_steps}
    recipe = dataclasses.replace(Recipe(), **{k: v for k, v in changes.items() if v is not None})
    report = train_classifiers(args.data, args.encoder, args.out, tokenizer=args.tokenizer,
                               seed=args.seed, recipe=recipe, device=args.device)
    for aspect, dim in report["dimensions"].items():
        test = dim["test"]
        print(f"{aspect}: test accuracy {test['accuracy']:.4f} macro-F1 {test['macro_f1']:.4f}")
    print(f"compare with {report['paper_source']}")
    print(args.out)
    return 0
