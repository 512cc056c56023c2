"""`empo eval generate|epitome|bertscore|mmlu`: each stage on files, metrics merged into --out."""
from __future__ import annotations

import argparse
from pathlib import Path

from empo.commands.common import add_section_options, section_from_args
from empo.config import BertScoreConfig, EpitomeConfig, GenerationConfig, MMLUConfig
from empo.evaluate.generate import GenerationSettings, generate_file
from empo.evaluate.mmlu import run_mmlu
from empo.evaluate.stages import bertscore_file, epitome_file
from empo.store import check_output, merge_json
from empo.validate import check_seed as seed

# `eval.epitome` fields that are not options of `empo eval epitome` (--checkpoints names a directory)
# --tokenizer defaults to --encoder here (a directory is usually both)
EPITOME_SKIP = ("checkpoints", "tokenizer", "train_data", "train_seed")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's subcommands."""
    parser = sub.add_parser("eval", help="generate responses and compute the paper's metrics")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    gen = actions.add_parser("generate", help="batched, resumable generation for eval examples")
    gen.add_argument("--model", required=True, help="base model (Hub id or directory)")
    gen.add_argument("--adapter", type=Path, help="peft adapter directory")
    gen.add_argument("--data", required=True, type=Path, help="eval examples (empo data eval)")
    gen.add_argument("--out", required=True, type=Path, help="predictions.jsonl to write")
    add_section_options(gen, GenerationConfig, "eval.generation")
    gen.add_argument("--system-prompt", help="system message for prompts that have none")
    gen.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    gen.add_argument("--chat-template", help=".jinja file replacing the tokenizer's template")
    gen.add_argument("--seed", type=seed, help="random seed (matters when sampling)")
    gen.set_defaults(handler=_generate)

    epi = actions.add_parser("epitome", help="diff-EPITOME (ER, EX, IP) of a predictions file")
    epi.add_argument("--input", required=True, type=Path, help="predictions.jsonl")
    epi.add_argument("--checkpoints", required=True, type=Path,
                     help="directory with finetuned_ER.pth, finetuned_EX.pth, finetuned_IP.pth")
    add_section_options(epi, EpitomeConfig, "eval.epitome", skip=EPITOME_SKIP)
    epi.add_argument("--tokenizer", help="tokenizer (id or directory; default: --encoder)")
    epi.add_argument("--out", required=True, type=Path, help="metrics.json to merge into")
    epi.add_argument("--per-item", type=Path, help="JSONL of per-example levels")
    epi.set_defaults(handler=_epitome)

    bert = actions.add_parser("bertscore", help="BERTScore of predictions vs references")
    bert.add_argument("--input", required=True, type=Path, help="predictions.jsonl")
    add_section_options(bert, BertScoreConfig, "eval.bertscore")
    bert.add_argument("--out", required=True, type=Path, help="metrics.json to merge into")
    bert.set_defaults(handler=_bertscore)

    mmlu = actions.add_parser("mmlu", help="MMLU accuracy through lm-evaluation-harness")
    mmlu.add_argument("--model", required=True, help="base model (Hub id or directory)")
    mmlu.add_argument("--adapter", type=Path, help="peft adapter directory")
    add_section_options(mmlu, MMLUConfig, "eval.mmlu")
    mmlu.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    mmlu.add_argument("--out", required=True, type=Path,
                      help="metrics.json to merge into (mmlu_results.json is written beside it)")
    mmlu.set_defaults(handler=_mmlu)


def _check_out(path: Path, args: argparse.Namespace) -> None:
    """Before any model loads: the output can be written and is none of the inputs."""
    inputs = [getattr(args, name, None) for name in
              ("input", "data", "model", "adapter", "checkpoints", "include_path")]
    check_output(path, [i for i in inputs if isinstance(i, (str, Path))])


def _report(out: Path, metrics: dict) -> None:
    merge_json(out, metrics)
    print(f"{out}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in metrics.items()))


def _generate(args: argparse.Namespace) -> int:
    _check_out(args.out, args)
    settings = GenerationSettings.from_config(
        section_from_args(args, GenerationConfig, "eval.generation"), args.system_prompt)
    out = generate_file(args.data, args.out, args.model, args.adapter, settings, dtype=args.dtype,
                        chat_template=args.chat_template, seed=args.seed)
    print(out)
    return 0


def _epitome(args: argparse.Namespace) -> int:
    _check_out(args.out, args)
    if args.per_item is not None:
        _check_out(args.per_item, args)
    epitome = section_from_args(args, EpitomeConfig, "eval.epitome", skip=EPITOME_SKIP)
    metrics = epitome_file(args.input, args.checkpoints, epitome.encoder, args.tokenizer,
                           epitome.padding, epitome.batch_size, per_item=args.per_item)
    _report(args.out, metrics)
    return 0


def _bertscore(args: argparse.Namespace) -> int:
    _check_out(args.out, args)
    bert = section_from_args(args, BertScoreConfig, "eval.bertscore")
    metrics = bertscore_file(args.input, bert.model, bert.num_layers, bert.batch_size,
                             bert.rescale_with_baseline)
    _report(args.out, metrics)
    return 0


def _mmlu(args: argparse.Namespace) -> int:
    _check_out(args.out, args)
    mmlu = section_from_args(args, MMLUConfig, "eval.mmlu")
    metrics = run_mmlu(args.model, args.adapter, mmlu.tasks, mmlu.num_fewshot, mmlu.include_path,
                       mmlu.batch_size, mmlu.limit, args.dtype,
                       results_path=args.out.parent / "mmlu_results.json")
    _report(args.out, metrics)
    return 0
