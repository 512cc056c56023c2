"""`empo eval generate|epitome|bertscore|mmlu`: each stage on files, metrics merged into --out."""
from __future__ import annotations

import argparse
from pathlib import Path

from empo.validate import check_non_negative_int as non_negative_int
from empo.validate import check_positive_int as positive_int
from empo.validate import check_seed as seed


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's subcommands."""
    parser = sub.add_parser("eval", help="generate responses and compute the paper's metrics")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    gen = actions.add_parser("generate", help="batched, resumable generation for eval examples")
    gen.add_argument("--model", required=True, help="base model (Hub id or directory)")
    gen.add_argument("--adapter", type=Path, help="peft adapter directory")
    gen.add_argument("--data", required=True, type=Path, help="eval examples (empo data eval)")
    gen.add_argument("--out", required=True, type=Path, help="predictions.jsonl to write")
    gen.add_argument("--batch-size", type=positive_int, default=32)
    gen.add_argument("--max-new-tokens", type=positive_int, default=128)
    gen.add_argument("--do-sample", action="store_true", help="sample (default: greedy)")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--system-prompt", help="system message for prompts that have none")
    gen.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    gen.add_argument("--chat-template", help=".jinja file replacing the tokenizer's template")
    gen.add_argument("--seed", type=seed, help="random seed (matters when sampling)")
    gen.set_defaults(handler=_generate)

    epi = actions.add_parser("epitome", help="diff-EPITOME (ER, EX, IP) of a predictions file")
    epi.add_argument("--input", required=True, type=Path, help="predictions.jsonl")
    epi.add_argument("--checkpoints", required=True, type=Path,
                     help="directory with finetuned_ER.pth, finetuned_EX.pth, finetuned_IP.pth")
    epi.add_argument("--encoder", default="roberta-base", help="encoder config (id or directory)")
    epi.add_argument("--tokenizer", help="tokenizer (id or directory; default: --encoder)")
    epi.add_argument("--padding", default="none", choices=("none", "max_length"))
    epi.add_argument("--batch-size", type=positive_int, default=32)
    epi.add_argument("--out", required=True, type=Path, help="metrics.json to merge into")
    epi.add_argument("--per-item", type=Path, help="JSONL of per-example levels")
    epi.set_defaults(handler=_epitome)

    bert = actions.add_parser("bertscore", help="BERTScore of predictions vs references")
    bert.add_argument("--input", required=True, type=Path, help="predictions.jsonl")
    bert.add_argument("--model", default="roberta-large", help="encoder (id or directory)")
    bert.add_argument("--num-layers", type=positive_int, help="layer to use (required for a directory)")
    bert.add_argument("--batch-size", type=positive_int, default=64)
    bert.add_argument("--rescale-with-baseline", action="store_true")
    bert.add_argument("--out", required=True, type=Path, help="metrics.json to merge into")
    bert.set_defaults(handler=_bertscore)

    mmlu = actions.add_parser("mmlu", help="MMLU accuracy through lm-evaluation-harness")
    mmlu.add_argument("--model", required=True, help="base model (Hub id or directory)")
    mmlu.add_argument("--adapter", type=Path, help="peft adapter directory")
    mmlu.add_argument("--tasks", nargs="+", default=["mmlu"],
                      help="lm-eval tasks/groups; `mmlu` metric = the first one's accuracy")
    mmlu.add_argument("--num-fewshot", type=non_negative_int, default=5)
    mmlu.add_argument("--include-path", type=Path, help="directory of local lm-eval task YAMLs")
    mmlu.add_argument("--limit", type=positive_int, help="at most N documents per task")
    mmlu.add_argument("--batch-size", type=positive_int, default=8)
    mmlu.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    mmlu.add_argument("--out", required=True, type=Path,
                      help="metrics.json to merge into (mmlu_results.json is written beside it)")
    mmlu.set_defaults(handler=_mmlu)


def _check_out(path: Path, args: argparse.Namespace) -> None:
    """Before any model loads: the output can be written and is none of the inputs."""
    from empo.store import check_output

    inputs = [getattr(args, name, None) for name in
              ("input", "data", "model", "adapter", "checkpoints", "include_path")]
    check_output(path, [i for i in inputs if isinstance(i, (str, Path))])


def _report(out: Path, metrics: dict) -> None:
    from empo.store import merge_json

    merge_json(out, metrics)
    print(f"{out}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in metrics.items()))


def _generate(args: argparse.Namespace) -> int:
    from empo.evaluate.generate import GenerationSettings, generate_file

    _check_out(args.out, args)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                                  temperature=args.temperature, top_p=args.top_p,
                                  batch_size=args.batch_size, system_prompt=args.system_prompt)
    out = generate_file(args.data, args.out, args.model, args.adapter, settings, dtype=args.dtype,
                        chat_template=args.chat_template, seed=args.seed)
    print(out)
    return 0


def _epitome(args: argparse.Namespace) -> int:
    from empo.evaluate.stages import epitome_file

    _check_out(args.out, args)
    if args.per_item is not None:
        _check_out(args.per_item, args)
    metrics = epitome_file(args.input, args.checkpoints, args.encoder, args.tokenizer,
                           args.padding, args.batch_size, per_item=args.per_item)
    _report(args.out, metrics)
    return 0


def _bertscore(args: argparse.Namespace) -> int:
    from empo.evaluate.stages import bertscore_file

    _check_out(args.out, args)
    metrics = bertscore_file(args.input, args.model, args.num_layers, args.batch_size,
                             args.rescale_with_baseline)
    _report(args.out, metrics)
    return 0


def _mmlu(args: argparse.Namespace) -> int:
    from empo.evaluate.mmlu import run_mmlu

    _check_out(args.out, args)
    metrics = run_mmlu(args.model, args.adapter, args.tasks, args.num_fewshot, args.include_path,
                       args.batch_size, args.limit, args.dtype,
                       results_path=args.out.parent / "mmlu_results.json")
    _report(args.out, metrics)
    return 0
