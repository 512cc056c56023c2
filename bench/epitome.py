"""Benchmark: diff-EPITOME scoring at roberta-base dimensions, batched scorer vs one pair at a time.

Random weights in the published key layout (the three checkpoints sharing the seeker encoder, as
the originals do) go through the real loader (`classifiers_from_state_dicts`: strict key check,
shared-seeker detection). Inputs are N examples (seeker, prediction, reference) of ED-like
lengths, tokenized with a small byte-level BPE. In one process, alternating so both see the same
machine load:
  (a) the one-pair-at-a-time loop (`reference_logits`: the paper's way, each (seeker, response)
      pair through the original forward, unpadded, per classifier)
  (b) `EpitomeScorer.score` (batched by length, seeker padding masked, seekers encoded once)
Levels of (a) and (b) must be identical. Throughput counts (seeker, response) pairs scored by all
three classifiers: 2 per example.

    python bench/epitome.py [--examples 32] [--batch-size 32] [--repeats 2] [--device cpu] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

GOAL_RATIO = 3.0
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                    type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                    eos_token_id=2)


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((l.split(":", 1)[1].strip() for l in out.splitlines()
                      if l.startswith("Model name:")), platform.processor())
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--padding", default="none", choices=("none", "max_length"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    from transformers import RobertaConfig

    from empo.evaluate.epitome import (ASPECTS, EpitomeScorer, classifiers_from_state_dicts,
                                       reference_logits)
    from empo.evaluate.tiny import (random_epitome_state_dicts, sample_sentences,
                                    tiny_roberta_tokenizer)

    config = RobertaConfig(**ROBERTA_BASE)
    start = time.perf_counter()
    states = random_epitome_state_dicts(config, seed=0, share_seeker=True)
    classifiers = classifiers_from_state_dicts(states, config)
    del states
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny_roberta_tokenizer(tmp)
    scorer = EpitomeScorer(classifiers, tokenizer, padding=args.padding,
                           batch_size=args.batch_size, device=args.device)
    setup = time.perf_counter() - start
    text = sample_sentences(seed=7, lines=3 * args.examples)
    n = args.examples
    seekers, predictions, references = text[:n], text[n:2 * n], text[2 * n:]
    lengths = [len(ids) for ids in tokenizer([t.lower() for t in text])["input_ids"]]

    scorer.score(seekers[:2], predictions[:2], references[:2])  # warm-up
    loop_times, batched_times = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        alone = {k: reference_logits(scorer.classifiers, tokenizer, seekers, responses,
                                     args.padding) for k, responses in
                 (("pred", predictions), ("ref", references))}
        loop_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        levels = scorer.score(seekers, predictions, references)
        batched_times.append(time.perf_counter() - t0)
        for aspect in ASPECTS:
            assert levels.pred[aspect] == alone["pred"][aspect].argmax(-1).tolist(), aspect
            assert levels.ref[aspect] == alone["ref"][aspect].argmax(-1).tolist(), aspect

    pairs = 2 * n
    loop_rate, batched_rate = pairs / min(loop_times), pairs / min(batched_times)
    result = {
        "device": device_name(args.device), "examples": n, "pairs": pairs,
        "batch_size": args.batch_size, "padding": args.padding,
        "seeker_encoders": scorer.seeker_encoders,
        "tokens_mean": round(sum(lengths) / len(lengths), 1), "tokens_max": max(lengths),
        "loop_pairs_per_s": round(loop_rate, 2), "batched_pairs_per_s": round(batched_rate, 2),
        "speedup": round(batched_rate / loop_rate, 2), "levels_identical": True,
        "loop_s": [round(t, 2) for t in loop_times],
        "batched_s": [round(t, 2) for t in batched_times], "setup_s": round(setup, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
        met = "met" if result["speedup"] >= GOAL_RATIO else "NOT met"
        print(f"{'goal':>20}: >= {GOAL_RATIO}x -> {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
