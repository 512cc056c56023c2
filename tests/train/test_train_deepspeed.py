"""DeepSpeed ZeRO-2/3 in two processes over gloo (torchrun): the same losses as one plain process."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from trainutil import PROJECT_ROOT, SMOKE, read_log, smoke_overrides, subprocess_env

from empo.store import run_dir
from empo.distributed import free_port

STEPS = ["sft.trainer_args={max_steps: 6}", "dpo.trainer_args={max_steps: 6}"]


def _torchrun(stage, zero, assets, results, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "empo.cli", "train", stage, str(SMOKE), *smoke_overrides(assets, results),
           *STEPS, f"{stage}.deepspeed={zero}", "--seed", "1"]
    proc = subprocess.run(cmd, env=subprocess_env(OMP_NUM_THREADS="1"), cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=900)
    (tmp_path / f"{stage}-{zero}.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def single_process(make_cfg, sft_run, tmp_path_factory):
    """The reference: SFT and DPO for 6 steps in this process, without DeepSpeed."""
    from empo.train.dpo import train_dpo
    from empo.train.sft import train_sft

    root = tmp_path_factory.mktemp("single")
    cfg = make_cfg(*STEPS)
    train_sft(cfg, 1, root / "sft")
    train_dpo(cfg, 1, root / "dpo", sft_run / "adapter")
    return {"sft": read_log(root / "sft"), "dpo": read_log(root / "dpo")}


def _assert_same_losses(got, want):
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 4, 6]
    for a, b in zip(got, want):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5), (a, b)
        assert a["learning_rate"] == pytest.approx(b["learning_rate"])


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_process_sft_matches_one_process(zero, tiny_assets, single_process, tmp_path):
    results = tmp_path / "results"
    _torchrun("sft", zero, tiny_assets, results, tmp_path)
    run = run_dir(results / "smoke", "sft", 1)
    _assert_same_losses(read_log(run), single_process["sft"])
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_process_dpo_matches_one_process(zero, tiny_assets, sft_run, single_process, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(sft_run, run_dir(results / "smoke", "sft", 1))  # the same SFT adapter as the reference
    _torchrun("dpo", zero, tiny_assets, results, tmp_path)
    rows = read_log(run_dir(results / "smoke", "sft_dpo", 1))
    _assert_same_losses(rows, single_process["dpo"])
    for a, b in zip(rows, single_process["dpo"]):
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], rel=1e-3, abs=1e-6)
