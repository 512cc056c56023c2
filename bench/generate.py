"""Benchmark: greedy generation on the tiny model, batched (by prompt length, left padding) vs one
prompt at a time, through the same `generate_predictions` code path (batch size 1 for the loop).

Uses the tiny offline assets (built in a temp dir unless --assets names existing ones) and the eval
examples of their test split. In one process, alternating so both see the same machine load.
Predictions of both runs must be identical.

    python bench/generate.py [--assets DIR] [--prompts 64] [--batch-size 64] [--max-new-tokens 32]
                             [--repeats 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

GOAL_RATIO = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, help="existing `empo assets tiny` directory")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from empo.assets import ensure_tiny_assets
    from empo.data.chat import eligible, eval_example
    from empo.data.ed import load_dialogues
    from empo.evaluate.generate import GenerationSettings, generate_predictions, load_generator

    with tempfile.TemporaryDirectory() as tmp:
        assets = ensure_tiny_assets(args.assets or Path(tmp) / "tiny")
        dialogues = eligible(load_dialogues(str(assets / "ed"), "test").dialogues)
        examples = [eval_example(d) for d in dialogues][: args.prompts]
        model, tokenizer = load_generator(str(assets / "model"), dtype="float32", device="cpu")
        runs = {"loop": GenerationSettings(args.max_new_tokens, batch_size=1),
                "batched": GenerationSettings(args.max_new_tokens, batch_size=args.batch_size)}
        generate_predictions(examples[:2], Path(tmp) / "warm.jsonl", model, tokenizer,
                             runs["batched"], progress=False)
        times: dict[str, list[float]] = {name: [] for name in runs}
        outputs: dict[str, str] = {}
        for repeat in range(args.repeats):
            for name, settings in runs.items():
                out = Path(tmp) / f"{name}-{repeat}.jsonl"
                start = time.perf_counter()
                generate_predictions(examples, out, model, tokenizer, settings, progress=False)
                times[name].append(time.perf_counter() - start)
                outputs[name] = out.read_text()
        assert outputs["loop"] == outputs["batched"], "batched greedy differs from one at a time"
        new_tokens = sum(len(tokenizer(json.loads(line)["prediction"],
                                       add_special_tokens=False)["input_ids"])
                         for line in outputs["batched"].splitlines())

    import torch

    loop_rate = len(examples) / min(times["loop"])
    batched_rate = len(examples) / min(times["batched"])
    result = {
        "device": f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "prompts": len(examples), "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "prediction_tokens": new_tokens,
        "loop_prompts_per_s": round(loop_rate, 2), "batched_prompts_per_s": round(batched_rate, 2),
        "speedup": round(batched_rate / loop_rate, 1), "identical": True,
        "loop_s": [round(t, 2) for t in times["loop"]],
        "batched_s": [round(t, 2) for t in times["batched"]],
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
        met = "met" if result["speedup"] >= GOAL_RATIO else "NOT met"
        print(f"{'goal':>22}: >= {GOAL_RATIO}x -> {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
