"""The launch commands on bad input: one clear message, exit status 2, nothing started or written.
And `empo stage`, the one-stage entry the sbatch wrappers use."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from launchutil import finish_all_but, write_config

from empo.cli import main
from empo.config import load_config
from empo.launch.manifest import record_jobs
from empo.launch.experiment import write_experiment
from empo.pipeline import build_graph


@pytest.fixture
def config(tmp_path) -> Path:
    return write_config(tmp_path, {"eval.metrics": ["mmlu"]})


def error_of(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("empo: error: "), err
    return err


def test_an_unknown_executor_is_an_error_listing_the_allowed_ones(config, tmp_path, capsys):
    assert main(["run", str(config), "--executor", "kubernetes"]) == 2
    assert "unknown executor 'kubernetes'; allowed: local, debug, slurm" in error_of(capsys)
    assert not (tmp_path / "results").exists()


def test_an_unknown_runtime_is_an_error_listing_the_allowed_ones(config, tmp_path, capsys):
    assert main(["run", str(config), "cluster.container.runtime=docker"]) == 2
    assert "allowed: none, apptainer, pyxis, podman, charliecloud" in error_of(capsys)
    assert not (tmp_path / "results").exists()


def test_a_missing_image_is_an_error_before_anything_starts(config, tmp_path, capsys):
    image = tmp_path / "missing-rootfs"
    assert main(["run", str(config), "cluster.container.runtime=charliecloud",
                 f"cluster.container.image={image}"]) == 2
    assert f"cluster.container.image: {image} does not exist" in error_of(capsys)
    assert main(["submit", str(config), "cluster.container.runtime=apptainer"]) == 2
    assert "cluster.container.image is required with runtime 'apptainer'" in error_of(capsys)
    assert not (tmp_path / "results").exists()


def test_submit_without_sbatch_on_path_is_an_error(config, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    env["PATH"] = str(tmp_path / "empty-bin")
    done = subprocess.run([sys.executable, "-m", "empo.cli", "submit", str(config)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "empo: error: sbatch not found on PATH" in done.stderr
    assert not (tmp_path / "results").exists()


def test_force_new_refuses_while_jobs_of_the_old_config_still_run(config, tmp_path, capsys):
    from empo.processes import ProcessId

    cfg = load_config(config)
    write_experiment(cfg)
    folder = cfg.experiment_dir / "jobs"  # a local job of this experiment, as the driver records it
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                "-m", "submitit.local._local", str(folder)])
    try:
        record_jobs(cfg, "local", folder,
                    {"sft/sft/seed-1": {"job_id": str(sleeper.pid), "executor": "local",
                                        "folder": str(folder),
                                        "process": ProcessId.of(sleeper.pid).record()}})
        assert main(["run", str(config), "lora.r=8", "--force-new"]) == 2
        assert f"jobs {sleeper.pid} are still queued or running" in error_of(capsys)
        assert (cfg.experiment_dir / "manifest.json").exists()  # nothing moved
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)


@pytest.mark.slow
def test_force_new_moves_the_old_results_aside(config, tmp_path, capsys):
    old = load_config(config)
    write_experiment(old)
    (old.experiment_dir / "table.csv").write_text("old table\n")
    # the new config's stages fail fast (no such model): what matters is where they write
    code = main(["run", str(config), "lora.r=8", "seeds=[1]", "model.name_or_path=/nonexistent",
                 "--force-new", "--parallel", "2", "--no-preflight"])
    assert code == 1
    (aside,) = [p for p in old.experiment_dir.parent.iterdir() if p.name.startswith("t.")]
    assert (aside / "table.csv").read_text() == "old table\n"
    assert f"moved the old results aside to {aside}" in capsys.readouterr().err
    new = load_config(config, ["lora.r=8", "model.name_or_path=/nonexistent"])
    assert "r: 8" in (new.experiment_dir / "experiment.yaml").read_text()


def test_stage_runs_one_stage_in_process_after_checking_its_inputs(config, capsys):
    cfg = load_config(config)
    graph = build_graph(cfg)
    assert main(["stage", "train", str(config)]) == 2
    assert "unknown stage 'train'; allowed: sft, dpo, kto, orpo, epitome_train, generate" \
        in error_of(capsys)
    assert main(["stage", "dpo", str(config), "--seed", "1"]) == 2
    assert "needs sft/sft/seed-1 first" in error_of(capsys)
    assert main(["stage", "eval", str(config), "--seed", "1"]) == 2
    assert "--variant is required" in error_of(capsys)
    assert main(["stage", "mmlu", str(config), "--variant", "sft@x=1", "--seed", "1"]) == 2
    assert "no stage 'mmlu' for variant 'sft@x=1'" in error_of(capsys)

    finish_all_but(graph, keep=set())
    assert main(["stage", "eval", str(config), "--variant", "baseline", "--seed", "2"]) == 0
    assert capsys.readouterr().out == "share/baseline/seed-2: done\n"
    assert main(["stage", "aggregate", str(config)]) == 0
    assert capsys.readouterr().out == "aggregate: done\n"
    assert (cfg.experiment_dir / "table.csv").exists()
    assert main(["stage", "mmlu", str(config), "--variant", "sft", "--seed", "1"]) == 0
    assert capsys.readouterr().out == "mmlu/sft/seed-1: skipped (done)\n"


def test_a_stage_refuses_to_start_while_another_process_holds_its_run_directory(config, capsys):
    """A plain `sbatch jobs/*.sbatch` (which runs `empo stage`) beside `empo submit`: the second
    process on a stage exits 2 naming the holder, and writes nothing into the run."""
    cfg = load_config(config)
    stage = build_graph(cfg).stages["mmlu/baseline/seed-1"]
    stage.directory.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from empo.store import stage_lock\n"
        f"with stage_lock({str(stage.directory)!r}, 'mmlu', 'x'):\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p.name for p in stage.directory.iterdir())
        assert main(["stage", "mmlu", str(config), "--variant", "baseline", "--seed", "1"]) == 2
        message = error_of(capsys)
        assert "stage mmlu/baseline/seed-1: already running" in message
        assert f"pid {holder.pid}" in message and "nothing done" in message
        assert sorted(p.name for p in stage.directory.iterdir()) == before
        assert not (stage.directory / "stage.json").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_status_and_cancel_need_a_results_directory(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "no experiment.yaml" in error_of(capsys)
    assert main(["cancel", str(tmp_path)]) == 2


def test_cancel_of_a_finished_experiment_cancels_nothing(config, capsys):
    cfg = load_config(config)
    finish_all_but(build_graph(cfg), keep=set())
    write_experiment(cfg)
    assert main(["cancel", str(cfg.experiment_dir)]) == 0
    assert capsys.readouterr().out == "cancelled 0 job(s)\n"
    assert main(["status", str(cfg.experiment_dir), "--json"]) == 0
    states = {s["key"]: s["state"] for s in json.loads(capsys.readouterr().out)}
    assert states["sft/sft/seed-1"] == "done" and states["aggregate"] == "not-run"


def test_the_cli_imports_no_torch():
    done = subprocess.run([sys.executable, "-X", "importtime", "-c",
                           "import empo.cli, empo.pipeline, empo.launch.run, empo.launch.status"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                if "|" in line}
    assert not imported & {"torch", "transformers", "trl", "peft", "datasets", "pandas"}


def test_stage_eval_of_a_later_baseline_seed_copies_the_first_or_evaluates_it_itself(make_cfg):
    from empo.commands.launch import select_stages

    cfg = make_cfg()
    graph = build_graph(cfg)
    own = select_stages(graph, "eval", "baseline", 2, cfg.seeds)  # seed 1 not evaluated yet
    assert [s.key for s in own] == [f"{k}/baseline/seed-2" for k in
                                    ("generate", "epitome", "bertscore", "mmlu")]
    assert own[1].deps == ("generate/baseline/seed-2",) and own[0].adapter is None
    finish_all_but(graph, keep=set())
    assert [s.key for s in select_stages(graph, "eval", "baseline", 2, cfg.seeds)] == [
        "share/baseline/seed-2"]
