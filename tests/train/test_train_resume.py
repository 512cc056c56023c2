"""Checkpoints and resume: a run killed after its first checkpoint ends where an uninterrupted one does."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest
from trainutil import PROJECT_ROOT, SMOKE, smoke_overrides, subprocess_env

from empo.store import is_done, run_dir
from empo.train.common import last_checkpoint

# SFT: 2 epochs of 24 steps, first checkpoint at step 4 (mid epoch 0).
# DPO: 2 epochs (draws) of 24 steps, first checkpoint at step 30, i.e. inside epoch 1 (draw 1).
STAGES = {
    "sft": (["sft.num_train_epochs=2", "sft.save_steps=4"], "sft", 4, 48),
    "dpo": (["dpo.num_train_epochs=2", "dpo.save_steps=30"], "sft_dpo", 30, 48),
}


def _command(stage, assets, results, extra):
    return [sys.executable, "-m", "empo.cli", "train", stage, str(SMOKE),
            *smoke_overrides(assets, results), *extra, "--seed", "1"]


def _prepare(stage, sft_run, results):
    if stage == "dpo":  # DPO starts from a finished SFT stage of the same seed
        shutil.copytree(sft_run, run_dir(results / "smoke", "sft", 1))


def _adapter(run):
    from safetensors.torch import load_file

    return load_file(run / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_killed_run_resumes_to_the_uninterrupted_adapter(stage, tiny_assets, sft_run, tmp_path):
    extra, variant, first_checkpoint, total_steps = STAGES[stage]
    env = subprocess_env(OMP_NUM_THREADS="1")

    # 1. interrupted: SIGKILL as soon as the first checkpoint is complete
    killed = tmp_path / "killed"
    _prepare(stage, sft_run, killed)
    run = run_dir(killed / "smoke", variant, 1)
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(_command(stage, tiny_assets, killed, extra), env=env, cwd=PROJECT_ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
        marker = run / "checkpoints" / f"checkpoint-{first_checkpoint}" / "trainer_state.json"
        deadline = time.monotonic() + 600
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert marker.exists(), (tmp_path / "killed.log").read_text()[-3000:]
    assert not is_done(run) and not (run / "adapter").exists(), "the run finished before it was killed"
    killed_at = int(last_checkpoint(run).name.rsplit("-", 1)[1])
    assert first_checkpoint <= killed_at < total_steps

    # 2. rerun: resumes from the checkpoint and finishes
    rerun = subprocess.run(_command(stage, tiny_assets, killed, extra), env=env, cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {run / 'checkpoints'}" in rerun.stderr
    assert is_done(run)

    # 3. uninterrupted, same seed
    clean = tmp_path / "clean"
    _prepare(stage, sft_run, clean)
    once = subprocess.run(_command(stage, tiny_assets, clean, extra), env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert once.returncode == 0, once.stderr[-3000:]

    resumed, reference = _adapter(run), _adapter(run_dir(clean / "smoke", variant, 1))
    assert resumed.keys() == reference.keys()
    diff = max((resumed[k] - reference[k]).abs().max().item() for k in reference)
    assert diff <= 1e-5


@pytest.mark.slow
def test_the_requeue_signal_saves_the_step_in_progress_and_the_rerun_resumes_there(tiny_assets,
                                                                                   tmp_path):
    # no periodic checkpoint (save_steps past the end): what the rerun resumes from is the one
    # saved at the signal, of the step that was in progress (SLURM/submitit: USR2 before the limit)
    extra = ["sft.num_train_epochs=2", "sft.save_steps=1000", "sft.logging_steps=1"]
    env = subprocess_env(OMP_NUM_THREADS="1")
    signalled = tmp_path / "signalled"
    run = run_dir(signalled / "smoke", "sft", 1)
    with open(tmp_path / "signalled.log", "w") as log:
        proc = subprocess.Popen(_command("sft", tiny_assets, signalled, extra), env=env,
                                cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
        steps = run / "train_log.jsonl"
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline and (
                not steps.exists() or len(steps.read_text().splitlines()) < 3):
            time.sleep(0.02)
        proc.send_signal(signal.SIGUSR2)
        assert proc.wait(timeout=600) == -signal.SIGUSR2  # handed on: the default ends it
    text = (tmp_path / "signalled.log").read_text()
    assert "SIGUSR2 received: saving a checkpoint" in text, text[-3000:]
    saved = last_checkpoint(run)
    assert saved is not None and not is_done(run), text[-3000:]
    step = int(saved.name.rsplit("-", 1)[1])
    assert 3 <= step < 48 and f"requeue signal: stopping at step {step} of 48" in text

    rerun = subprocess.run(_command("sft", tiny_assets, signalled, extra), env=env,
                           cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {saved}" in rerun.stderr and is_done(run)

    clean = tmp_path / "clean"
    once = subprocess.run(_command("sft", tiny_assets, clean, extra), env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert once.returncode == 0, once.stderr[-3000:]
    resumed, reference = _adapter(run), _adapter(run_dir(clean / "smoke", "sft", 1))
    assert resumed.keys() == reference.keys()
    assert max((resumed[k] - reference[k]).abs().max().item() for k in reference) <= 1e-5
