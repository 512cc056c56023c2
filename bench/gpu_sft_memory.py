"""Prepared GPU check: SFT at Mistral-7B widths vs `empo plan`'s per-GPU memory prediction.

    python bench/gpu_sft_memory.py [--layers 2] [--batch 4] [--max-length 1024] [--steps 8]
                                   [--deepspeed zero2] [--out DIR]

Builds a random-init MistralForCausalLM with the real 7B widths (hidden 4096, intermediate 14336,
32 heads, 8 KV heads, vocab 32000) but only `--layers` layers, in bf16, and trains the paper's
LoRA (r=1024, alpha=256, all seven projections) with `empo.train.sft` under DeepSpeed ZeRO-2 on
one GPU (global batch = per-device batch, so one micro-batch per optimizer step). Every training
dialogue is longer than max_length, so each micro-batch is exactly batch × max_length tokens, as
the planner assumes. Records tokens/s (trl's token count between the end of step 2 and the last
step) and torch.cuda.max_memory_allocated over the whole run, prints `empo plan`'s prediction for
the same config, and the ratio (goal: measured within 20% of predicted). Results go to stdout and
to DIR/gpu_sft_memory.json (DIR defaults to $OUT, else the current directory).

Needs one CUDA GPU and the empo stack installed (CUDA build of torch, transformers, trl, peft,
deepspeed); no network: the tokenizer and the dialogues come from the tiny offline assets.
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
TABLE1 = ROOT / "configs" / "experiments" / "table1.yaml"
ARCH = ROOT / "empo" / "defaults" / "models" / "mistral-7b.json"


def build_model(out: Path, layers: int, tokenizer_dir: Path) -> Path:
    """Random-init Mistral with the 7B widths and `layers` layers, saved in bf16 with a tokenizer."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    config = MistralConfig(**{k: v for k, v in json.loads(ARCH.read_text()).items()
                              if k not in ("architectures", "model_type", "transformers_version", "torch_dtype")})
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = MistralForCausalLM(config).to(torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def write_long_corpus(out: Path, tokens_needed: int) -> Path:
    """A raw-layout ED train.csv of (short user turn, long listener turn) dialogues overflowing
    `tokens_needed`, so that truncation to max_length keeps trained listener tokens."""
    from empo.data.ed import Dialogue
    from empo.data.synthetic import raw_lines, synthetic_dialogues

    short = synthetic_dialogues("train", per_emotion=2, seed=0)
    dialogues = []
    for d in short:
        first, second = d.turns[0], d.turns[1]
        repeat = max(1, tokens_needed // max(1, len(second.split())))  # ≥ 1 token per word
        dialogues.append(Dialogue(conv_id=d.conv_id, emotion=d.emotion, situation=d.situation,
                                  turns=[first, " ".join([second] * repeat)]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.csv").write_text("\n".join(raw_lines(dialogues, seed=0, malformed=False)) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="per-device micro-batch")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--deepspeed", default="zero2")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_sft_memory.py needs a CUDA GPU")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from transformers import TrainerCallback

    from empo.assets import ensure_tiny_assets
    from empo.config import load_config
    from empo.train.memory import GIB, format_plan, plan_memory
    from empo.train.sft import build_sft_trainer

    with tempfile.TemporaryDirectory(prefix="empo-gpu-sft-") as tmp_name:
        tmp = Path(tmp_name)
        assets = ensure_tiny_assets(tmp / "tiny")
        model_dir = build_model(tmp / "model", args.layers, assets / "model")
        corpus = write_long_corpus(tmp / "ed", 2 * args.max_length)
        cfg = load_config(TABLE1, [
            f"model.name_or_path={model_dir}", f"model.architecture={model_dir}/config.json",
            f"data.source={corpus}", f"results_dir={tmp / 'results'}", "cluster.profile=null",
            "cluster.gpus_per_node=1", "cluster.nodes=1", "cluster.gpu_memory_gb=80",
            f"sft.deepspeed={args.deepspeed}", f"sft.per_device_train_batch_size={args.batch}",
            f"sft.global_batch_size={args.batch}", f"sft.max_length={args.max_length}",
            "sft.logging_steps=1", "sft.save_steps=1000000", f"sft.trainer_args={{max_steps: {args.steps}}}",
        ])
        plan = plan_memory(cfg, "sft", gpus_per_node=1, nodes=1)
        print(format_plan(plan, f"{args.layers}-layer Mistral-7B widths"), flush=True)

        stamps: dict[int, float] = {}

        class Clock(TrainerCallback):
            def on_step_end(self, a, state, control, **kwargs):  # noqa: ANN001
                torch.cuda.synchronize()
                stamps[state.global_step] = time.perf_counter()

        torch.cuda.reset_peak_memory_stats()
        trainer = build_sft_trainer(cfg, 1, tmp / "run", callbacks=[Clock()])
        trainer.train()
        peak = torch.cuda.max_memory_allocated()
        reserved = torch.cuda.max_memory_reserved()
        tokens = {e["step"]: e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e}
        first, last = 2, args.steps
        tokens_per_s = (tokens[last] - tokens[first]) / (stamps[last] - stamps[first])
        result = {
            "device": torch.cuda.get_device_name(0), "layers": args.layers, "batch": args.batch,
            "max_length": args.max_length, "deepspeed": args.deepspeed, "steps": args.steps,
            "lora_params": plan.lora_params, "base_params": plan.base_params,
            "tokens_per_s": tokens_per_s, "peak_allocated_gib": peak / GIB,
            "peak_reserved_gib": reserved / GIB, "predicted_gib": plan.total / GIB,
            "predicted_parts_gib": {k: v / GIB for k, v in plan.memory.items()},
            "measured_over_predicted": peak / plan.total,
        }
    print(json.dumps(result, indent=2))
    ratio = result["measured_over_predicted"]
    print(f"peak allocated {peak / GIB:.2f} GiB vs predicted {plan.total / GIB:.2f} GiB: ratio {ratio:.3f} "
          f"({'within' if abs(ratio - 1) <= 0.2 else 'OUTSIDE'} 20%); {tokens_per_s:,.0f} tokens/s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_sft_memory.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
