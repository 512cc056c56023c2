"""DPO reference log-probabilities: trl's `precompute_ref_log_probs` per draw vs per step.

    python bench/dpo_ref_logprobs.py [--repeats 2]

Runs the DPO stage of the smoke config (tiny model, 3 epochs = 3 preference draws, CPU, one
thread) twice per repeat, alternating: (a) reference forward in every step (trl's default) and
(b) `dpo.trainer_args.precompute_ref_log_probs: true` (trl computes the reference log-probs of
every row of every draw once, before training). Reports wall time of build + train, the number
of reference forward passes (counted on the model), the final loss of both (equal up to float
noise: same reference), and how often a chosen response's reference log-prob repeats across
draws (the share a cache of chosen log-probs would save).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "train"))


def run(cfg, out: Path, precompute: bool, sft_adapter: Path) -> dict:
    import torch

    from empo.train.dpo import build_dpo_trainer

    if precompute:
        cfg = cfg.with_overrides({"dpo.trainer_args": {"precompute_ref_log_probs": True}})
    start = time.perf_counter()
    trainer = build_dpo_trainer(cfg, 1, out, sft_adapter)
    built = time.perf_counter()
    forwards = {"n": 0}
    base = trainer.model.get_base_model()
    handle = base.register_forward_hook(lambda *a: forwards.__setitem__("n", forwards["n"] + 1))
    trainer.train()
    handle.remove()
    end = time.perf_counter()
    row = {"precompute": precompute, "build_s": built - start, "train_s": end - built,
           "total_s": end - start, "model_forwards_in_training": forwards["n"],
           "final_loss": [e["loss"] for e in trainer.state.log_history if "loss" in e][-1]}
    if precompute:
        draws = trainer.train_dataset
        chosen = {}
        for k in range(draws.num_draws):
            draws.select(k)
            for i in range(len(draws)):
                r = draws[i]
                chosen.setdefault(tuple(r["prompt_ids"] + r["chosen_ids"]), []).append(
                    r["ref_chosen_logps"])
        spread = max(max(v) - min(v) for v in chosen.values())
        row.update(distinct_chosen=len(chosen), rows=draws.num_draws * len(draws),
                   chosen_logp_spread_across_draws=spread)
    del trainer
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    from trainutil import SMOKE, smoke_overrides

    from empo.assets import ensure_tiny_assets
    from empo.config import load_config
    from empo.train.sft import train_sft

    assets = ensure_tiny_assets(ROOT / "assets" / "tiny")
    with tempfile.TemporaryDirectory(prefix="empo-dpo-ref-") as tmp_name:
        tmp = Path(tmp_name)
        cfg = load_config(SMOKE, smoke_overrides(assets, tmp / "results"))
        sft = train_sft(cfg, 1, tmp / "sft")
        rows = []
        for repeat in range(args.repeats):
            for precompute in (False, True):
                rows.append(run(cfg, tmp / f"dpo-{repeat}-{precompute}", precompute, sft))
                print(json.dumps(rows[-1]), flush=True)
    for flag in (False, True):
        best = min(r["total_s"] for r in rows if r["precompute"] is flag)
        print(f"precompute_ref_log_probs={flag}: best build+train {best:.2f} s")


if __name__ == "__main__":
    main()
