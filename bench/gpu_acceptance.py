"""Prepared acceptance run for one GPU of >= 80 GB (issue 17): at most ~8 minutes, no network,
one JSON file in $OUT (gpu_acceptance.json) and one printed table.

    bench/gpu_acceptance.sh [--cpu-smoke] [--layers 2] [--batch 4] [--max-length 1024] [--steps 6]

Measures, on the 7B-width proxy (a random-init MistralForCausalLM with Mistral-7B's widths and
`--layers` layers, bf16, the paper's LoRA r=1024 alpha=256 on all seven projections, micro-batch
`--batch` x `--max-length` tokens, every row longer than max_length):
  sft / dpo       peak torch.cuda.max_memory_allocated vs `empo plan`'s prediction for the same
                  config (goal: within 20%), tokens/s between step 2 and the last step, and MFU =
                  model FLOPs/s / the GPU's dense bf16 peak, model FLOPs per token = 6 x
                  non-embedding params + 12 x layers x hidden x max_length (PaLM's count; the
                  gradient-checkpointing recompute and the DPO reference forward are not counted);
  options         the same SFT (and DPO) once per installed option of issue 17: flash_attention_2,
                  Liger kernels, padding-free (with flash), DPO precompute_ref_log_probs;
  generation      transformers batched (batch 64) vs one prompt at a time on the proxy, and vLLM
                  where installed (prompts/s, the same prompt ids);
  epitome         bench/epitome.py at roberta-base size on the GPU: batched vs the per-pair loop
                  (goal >= 30x).
`--cpu-smoke`: 1 layer, tiny widths, 2 steps, a few prompts, on the CPU: checks the script runs
(CI runs it); its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
TABLE1 = ROOT / "configs" / "experiments" / "table1.yaml"
ARCH = ROOT / "empo" / "defaults" / "models" / "mistral-7b.json"
BF16_PEAK = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12}  # dense bf16 FLOP/s (vendor data sheets)
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16)


def peak_flops(name: str) -> float | None:
    for key, value in BF16_PEAK.items():  # "H100 PCIe" before "H100"
        if key in name:
            return value
    return None


def build_proxy(out: Path, layers: int, tokenizer_dir: Path, smoke: bool, device: str) -> Path:
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    data = {k: v for k, v in json.loads(ARCH.read_text()).items()
            if k not in ("architectures", "model_type", "transformers_version", "torch_dtype")}
    if smoke:
        data.update(TINY)
    config = MistralConfig(**data)
    config.num_hidden_layers = layers
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config.vocab_size = max(config.vocab_size, len(tokenizer)) if not smoke else len(tokenizer)
    torch.manual_seed(0)
    with torch.device(device):
        model = MistralForCausalLM(config).to(torch.bfloat16)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def train_case(stage: str, cfg, tmp: Path, steps: int, sft_adapter: Path | None, peak: float | None,
               cuda: bool) -> dict:
    import torch
    from transformers import TrainerCallback

    from empo.train.memory import GIB, plan_memory

    stamps: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if cuda:
                torch.cuda.synchronize()
            stamps[state.global_step] = time.perf_counter()

    plan = plan_memory(cfg, stage, 1, 1)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    out = tmp / f"{stage}-{len(list(tmp.iterdir()))}"
    if stage == "sft":
        from empo.train.sft import build_sft_trainer

        trainer = build_sft_trainer(cfg, 1, out, callbacks=[Clock()])
    else:
        from empo.train.dpo import build_dpo_trainer

        trainer = build_dpo_trainer(cfg, 1, out, sft_adapter, callbacks=[Clock()])
    trainer.train()
    peak_bytes = torch.cuda.max_memory_allocated() if cuda else None
    tokens = {e["step"]: e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e}
    first = 2 if steps > 2 else 1
    rate = (tokens[steps] - tokens[first]) / (stamps[steps] - stamps[first]) \
        if steps > first and first in tokens and steps in tokens else None
    model_cfg = trainer.model.config
    non_embedding = plan.base_params - 2 * model_cfg.vocab_size * model_cfg.hidden_size
    per_token = 6 * non_embedding + 12 * model_cfg.num_hidden_layers * model_cfg.hidden_size \
        * getattr(cfg, stage).max_length
    row = {"stage": stage, "predicted_gib": plan.total / GIB,
           "peak_allocated_gib": peak_bytes / GIB if peak_bytes else None,
           "measured_over_predicted": peak_bytes / plan.total if peak_bytes else None,
           "tokens_per_s": rate,
           "mfu": rate * per_token / peak if rate and peak else None}
    if stage == "sft":
        row["adapter"] = str(out / "adapter")
        trainer.save_model(str(out / "adapter"))
    del trainer
    if cuda:
        torch.cuda.empty_cache()
    return row


def generation_case(model_dir: Path, examples: list, cuda: bool, max_new: int) -> dict:
    import torch

    from empo.evaluate.generate import (GenerationSettings, generate_batch, load_generator,
                                        prompt_ids)

    model, tokenizer = load_generator(str(model_dir), dtype="bfloat16",
                                      device="cuda" if cuda else "cpu")
    settings = GenerationSettings(max_new_tokens=max_new, batch_size=64)
    ids = [prompt_ids(tokenizer, e["prompt"]) for e in examples]
    result = {"prompts": len(ids), "max_new_tokens": max_new}
    for name, size in (("batched_64", 64), ("one_at_a_time", 1)):
        subset = ids if size > 1 else ids[: max(2, len(ids) // 8)]
        start = time.perf_counter()
        for i in range(0, len(subset), size):
            generate_batch(model, tokenizer, subset[i:i + size], settings)
        if cuda:
            torch.cuda.synchronize()
        result[f"{name}_prompts_per_s"] = len(subset) / (time.perf_counter() - start)
    result["batched_speedup"] = result["batched_64_prompts_per_s"] / result["one_at_a_time_prompts_per_s"]
    del model
    if cuda:
        torch.cuda.empty_cache()
    if cuda and importlib.util.find_spec("vllm") is not None:
        from vllm import LLM, SamplingParams

        from empo.evaluate.vllm_backend import sampling_kwargs, vllm_inputs

        llm = LLM(model=str(model_dir), dtype="bfloat16", gpu_memory_utilization=0.5, seed=0)
        sampling = SamplingParams(**sampling_kwargs(settings, tokenizer.eos_token_id, 0))
        start = time.perf_counter()
        llm.generate(vllm_inputs(ids), sampling, use_tqdm=False)
        result["vllm_prompts_per_s"] = len(ids) / (time.perf_counter() - start)
        del llm
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args()
    if args.cpu_smoke:
        args.layers, args.batch, args.max_length, args.steps, args.prompts = 1, 2, 64, 2, 4
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    import torch

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        raise SystemExit("gpu_acceptance.py needs a CUDA GPU (or --cpu-smoke)")
    from gpu_sft_memory import write_long_corpus

    from empo.assets import ensure_tiny_assets
    from empo.config import load_config
    from empo.data.chat import eligible, eval_example
    from empo.data.ed import load_dialogues

    device = torch.cuda.get_device_name(0) if cuda else "cpu (smoke)"
    peak = peak_flops(device) if cuda else None
    report: dict = {"device": device, "bf16_peak_flops": peak, "smoke": args.cpu_smoke,
                    "layers": args.layers, "batch": args.batch, "max_length": args.max_length,
                    "steps": args.steps, "train": [], "generation": None, "epitome": None}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="empo-acceptance-") as tmp_name:
        tmp = Path(tmp_name)
        assets = ensure_tiny_assets(tmp / "tiny")
        model_dir = build_proxy(tmp / "model", args.layers, assets / "model", args.cpu_smoke,
                                "cuda" if cuda else "cpu")
        corpus = write_long_corpus(tmp / "ed", 2 * args.max_length)
        runs = tmp / "runs"
        runs.mkdir()
        common = [
            f"model.name_or_path={model_dir}", f"model.architecture={model_dir}/config.json",
            f"data.source={corpus}", f"results_dir={tmp / 'results'}", "cluster.profile=null",
            "cluster.gpus_per_node=1", "cluster.nodes=1", "cluster.gpu_memory_gb=80",
            "model.dtype=bfloat16", f"sft.bf16={cuda}", f"dpo.bf16={cuda}",
            # every pair is max_length long on purpose (worst-case memory): table1's p95 length
            # filter and prompt cap would cut them, so they are off here
            "dpo.length_percentile=null",
        ]
        if args.cpu_smoke:
            common += ["lora.r=8", "lora.lora_alpha=2", "sft.deepspeed=none", "dpo.deepspeed=none",
                       # the tiny byte-level tokenizer makes table1's DPO system prompt longer
                       # than the smoke's max_length: trl would drop every pair
                       "dpo.system_prompt=null"]
        for stage in ("sft", "dpo"):
            common += [f"{stage}.per_device_train_batch_size={args.batch}",
                       f"{stage}.global_batch_size={args.batch}",
                       f"{stage}.max_length={args.max_length}", f"{stage}.logging_steps=1",
                       f"{stage}.save_steps=1000000"]

        def cfg(stage: str, *extra: str, trainer_args: dict | None = None):
            ta = {"max_steps": args.steps, **(trainer_args or {})}
            return load_config(TABLE1, [*common, *extra, f"{stage}.trainer_args={json.dumps(ta)}"])

        flash = cuda and (importlib.util.find_spec("flash_attn") or importlib.util.find_spec("kernels"))
        liger = cuda and importlib.util.find_spec("liger_kernel") is not None
        variants = [("baseline (sdpa)", (), {})]
        if flash:
            variants.append(("flash_attention_2", ("model.attn_implementation=flash_attention_2",), {}))
            variants.append(("flash_attention_2 + padding_free",
                             ("model.attn_implementation=flash_attention_2",), {"padding_free": True}))
        if liger:
            variants.append(("liger", (), {"use_liger_kernel": True}))
        adapter = None
        for name, extra, options in variants:
            row = train_case("sft", cfg("sft", *extra, trainer_args=options), runs, args.steps,
                             None, peak, cuda)
            adapter = adapter or Path(row.pop("adapter"))
            row.pop("adapter", None)
            report["train"].append({"variant": name, **row})
        dpo_variants = [("baseline (sdpa)", (), {}), ("precompute_ref_log_probs", (),
                                                       {"precompute_ref_log_probs": True})]
        if flash:
            dpo_variants.append(("flash_attention_2", ("model.attn_implementation=flash_attention_2",), {}))
        if liger:
            dpo_variants.append(("liger", (), {"use_liger_kernel": True}))
        for name, extra, options in dpo_variants:
            row = train_case("dpo", cfg("dpo", *extra, trainer_args=options), runs, args.steps,
                             adapter, peak, cuda)
            report["train"].append({"variant": name, **row})

        dialogues = eligible(load_dialogues(str(assets / "ed"), "test").dialogues)
        examples = [eval_example(d) for d in dialogues]
        examples = (examples * (args.prompts // max(1, len(examples)) + 1))[: args.prompts]
        report["generation"] = generation_case(model_dir, examples, cuda,
                                               4 if args.cpu_smoke else 64)
    epitome_args = ["--examples", "8", "--repeats", "1", "--json"] if args.cpu_smoke else \
        ["--examples", "256", "--repeats", "2", "--device", "cuda", "--json"]
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "epitome.py"), *epitome_args],
                          capture_output=True, text=True, check=False,
                          timeout=120 if args.cpu_smoke else 240)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    report["epitome"] = json.loads(lines[-1]) if lines else {"error": done.stderr[-2000:]}
    report["wall_s"] = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_acceptance.json").write_text(json.dumps(report, indent=2) + "\n")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    print(f"\n{device}: {args.layers}-layer proxy, micro-batch {args.batch} x {args.max_length}")
    print(f"{'stage':<5} {'variant':<34} {'peak GiB':>9} {'plan GiB':>9} {'ratio':>6} "
          f"{'tokens/s':>10} {'MFU':>6}")
    for r in report["train"]:
        print(f"{r['stage']:<5} {r['variant']:<34} {fmt(r['peak_allocated_gib'], '9.2f')} "
              f"{r['predicted_gib']:9.2f} {fmt(r['measured_over_predicted'], '6.2f')} "
              f"{fmt(r['tokens_per_s'], '10,.0f')} {fmt(r['mfu'], '6.1%')}")
    g = report["generation"]
    print(f"generation: batched {g['batched_64_prompts_per_s']:.1f} prompts/s, one at a time "
          f"{g['one_at_a_time_prompts_per_s']:.1f} ({g['batched_speedup']:.1f}x), vLLM "
          f"{fmt(g.get('vllm_prompts_per_s'), '.1f')}")
    print(f"epitome: {json.dumps(report['epitome'])[:300]}")
    print(f"wall {report['wall_s']:.0f} s -> {args.out / 'gpu_acceptance.json'}")


if __name__ == "__main__":
    main()
