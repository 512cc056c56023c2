"""Tokens/s of SFT and DPO optimizer steps on the tiny model, 1 process and 2 (DeepSpeed ZeRO-2).

    python bench/train_step.py [--steps 12] [--warmup 2] [--json OUT]

Each case runs in a fresh process (2-process cases under `python -m torch.distributed.run`), with
OMP_NUM_THREADS = cores / processes unless --threads is given, on the smoke config and the tiny offline
assets: global batch 8 (per-device 4), max_length 256, fp32. tokens/s = tokens the trainer counted
(trl's `num_tokens`, all processes, prompt + completion, padding excluded) between the end of the
warm-up steps and the last step, divided by the wall time between those two step ends; the median
over single steps is printed beside it (robust to another job's burst on a shared machine).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SMOKE = ROOT / "configs" / "experiments" / "smoke.yaml"
CASES = [  # (stage, processes, deepspeed)
    ("sft", 1, "none"), ("sft", 1, "zero2"), ("sft", 2, "zero2"),
    ("dpo", 1, "none"), ("dpo", 1, "zero2"), ("dpo", 2, "zero2"),
]


def overrides(assets: Path, results: Path, stage: str, deepspeed: str, steps: int) -> list[str]:
    return [
        f"assets={assets}", f"model.name_or_path={assets}/model", f"data.source={assets}/ed",
        f"model.architecture={assets}/model/config.json", f"results_dir={results}",
        f"{stage}.deepspeed={deepspeed}", f"{stage}.logging_steps=1", f"{stage}.save_steps=100000",
        f"{stage}.trainer_args={{max_steps: {steps}}}",
    ]


def worker(args: argparse.Namespace) -> None:
    """One case (called in each process of a run): train `steps` steps, rank 0 writes the timing."""
    from transformers import TrainerCallback

    from empo.config import load_config
    from empo.train import common

    assets, work = Path(args.assets), Path(args.work)
    cfg = load_config(SMOKE, overrides(assets, work / "results", args.stage, args.deepspeed, args.steps))
    stamps: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kwargs):  # noqa: ANN001
            stamps[state.global_step] = time.perf_counter()

    out = work / "run"
    if args.stage == "sft":
        from empo.train.sft import build_sft_trainer

        trainer = build_sft_trainer(cfg, 1, out, callbacks=[Clock()])
    else:
        from empo.train.dpo import build_dpo_trainer

        trainer = build_dpo_trainer(cfg, 1, out, Path(args.sft_adapter), callbacks=[Clock()])
    trainer.train()
    if common.is_rank_zero():
        tokens = {e["step"]: e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e}
        first, last = args.warmup, args.steps
        elapsed = stamps[last] - stamps[first]
        per_step = sorted((tokens[i] - tokens[i - 1]) / (stamps[i] - stamps[i - 1]) for i in range(first + 1, last + 1))
        result = {
            "stage": args.stage, "processes": common.world_size(), "deepspeed": args.deepspeed,
            "steps_timed": last - first, "tokens": tokens[last] - tokens[first], "seconds": elapsed,
            "tokens_per_s": (tokens[last] - tokens[first]) / elapsed,
            "median_step_tokens_per_s": statistics.median(per_step),
            "s_per_step": elapsed / (last - first),
        }
        Path(args.result).write_text(json.dumps(result))


def run_case(stage: str, procs: int, deepspeed: str, assets: Path, sft_adapter: Path, steps: int,
             warmup: int, tmp: Path, threads: int) -> dict:
    work = tmp / f"{stage}-{procs}-{deepspeed}-{threads}"
    work.mkdir()
    result = work / "result.json"
    script = [str(Path(__file__).resolve()), "--worker", "--stage", stage, "--deepspeed", deepspeed,
              "--assets", str(assets), "--work", str(work), "--result", str(result), "--steps", str(steps),
              "--warmup", str(warmup), "--sft-adapter", str(sft_adapter)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(threads),
               TORCH_EXTENSIONS_DIR=str(ROOT / ".empo-cache" / "torch_extensions"))
    if procs > 1:
        from empo.train.common import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_port", str(free_port()), *script]
    else:
        cmd = [sys.executable, *script]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{stage} {procs}×{deepspeed} failed:\n{proc.stderr[-4000:]}")
    return json.loads(result.read_text())


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP threads per process (default: cores / processes)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--stage", "--deepspeed", "--assets", "--work", "--result", "--sft-adapter"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import torch
    import transformers
    import trl

    from empo.assets import ensure_tiny_assets
    from empo.config import load_config
    from empo.train.sft import train_sft

    assets = ensure_tiny_assets(ROOT / ".empo-cache" / "bench-assets" / "tiny")
    with tempfile.TemporaryDirectory(prefix="empo-bench-train-") as tmp_name:
        tmp = Path(tmp_name)
        sft_dir = tmp / "sft-adapter"
        cfg = load_config(SMOKE, overrides(assets, tmp / "results", "sft", "none", 8))
        adapter = train_sft(cfg, 1, sft_dir)  # the DPO cases start from it
        rows = []
        for stage, procs, deepspeed in CASES:
            load = os.getloadavg()[0]
            threads = args.threads or max(1, (os.cpu_count() or 1) // procs)
            row = run_case(stage, procs, deepspeed, assets, adapter, args.steps, args.warmup, tmp, threads)
            row.update(load_before=load, threads_per_process=threads)
            rows.append(row)
            print(f"{stage:4} {procs} proc × {threads} thread(s) {deepspeed:5}  {row['tokens_per_s']:8.0f} "
                  f"tokens/s (median step {row['median_step_tokens_per_s']:6.0f})  {row['s_per_step']:.3f} s/step  "
                  f"(load {load:.1f})", flush=True)
    print(f"machine: {machine()}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"trl {trl.__version__}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
