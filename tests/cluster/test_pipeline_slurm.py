"""The pipeline on a real SLURM cluster (scripts/slurm-cluster: slurmctld, slurmd, slurmdbd):
`empo submit` with afterok/aftercorr dependencies and job arrays, failures that cancel their
dependants, re-submission of only what is missing, preemption with requeue and resume, and the
torch distributed env of a multi-task job. No mocks: real daemons, real sbatch/sacct/scancel.
Every wait has a timeout; every experiment gets a fresh submitit folder (job ids restart at 1
on a fresh cluster)."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from empo.cli import main
from empo.config import load_config
from empo.launch import job_resources, make_executor
from empo.launch.manifest import read_manifest
from empo.launch.status import experiment_status
from empo.launch.experiment import write_experiment
from empo.distributed import distributed_env, scoped
from empo.pipeline import build_graph, stage_call
from empo.store import claim_experiment_dir, is_done, mark_done, run_dir
from fakes import fake_training, finish_training_and_mmlu

pytestmark = [pytest.mark.slurm]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SMOKE = PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"
LOCAL_PROFILE = PROJECT_ROOT / "configs" / "cluster" / "local.yaml"
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # job bodies defined in this file


def smoke_args(results: Path, *more: str) -> list[str]:
    """The smoke experiment on the local cluster (its profile; results under `results`)."""
    return [str(SMOKE), f"results_dir={results}", f"cluster.profile={LOCAL_PROFILE}",
            "cluster.executor=slurm", *more]


def wait_settled(cfg, graph, timeout_s: float, poll_s: float = 5.0) -> dict:
    """Poll sacct + markers until no stage is running or pending (jobs behind a failed one are
    cancelled by SLURM: --kill-on-invalid-dep); fail the test after `timeout_s`."""
    deadline = time.time() + timeout_s
    while True:
        statuses = experiment_status(graph, read_manifest(cfg.experiment_dir))
        active = [s for s in statuses if s.state in ("running", "pending")]
        if not active:
            return {s.key: s for s in statuses}
        if time.time() > deadline:
            pytest.fail(f"still active after {timeout_s:.0f} s: "
                        + ", ".join(f"{s.key}={s.state}" for s in active))
        time.sleep(poll_s)


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
                         capture_output=True, text=True, timeout=30).stdout.split()
    return out[0] if out else ""


@pytest.mark.slow
def test_smoke_on_slurm_failure_cancels_dependants_and_resubmission_completes(slurm_cluster, tmp_path,
                                                                              capsys):
    args = smoke_args(tmp_path / "results")
    cfg = load_config(args[0], args[1:])
    graph = build_graph(cfg)
    # A file where DPO seed 1 writes its run: that stage fails; everything after it must not run,
    # and seed 2 (its own array tasks, aftercorr) must not be held back by it. The directory is
    # EmPO's (claimed first): only a broken run inside our own store is simulated.
    claim_experiment_dir(cfg.experiment_dir)
    blocker = run_dir(cfg.experiment_dir, "sft_dpo", 1)
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory")

    assert main(["submit", *args]) == 0
    out = capsys.readouterr().out
    manifest = read_manifest(cfg.experiment_dir)
    jobs = manifest["jobs"]
    assert manifest["executor"] == "slurm" and manifest["config_hash"] == cfg.config_hash()
    assert jobs["sft/sft/seed-1"]["job_id"] in out
    # like stages across seeds are one array; DPO waits task by task on SFT (aftercorr)
    sft_array = jobs["sft/sft/seed-1"]["array_id"]
    assert sft_array and jobs["sft/sft/seed-2"]["job_id"] == f"{sft_array}_1"
    dpo = jobs["dpo/sft_dpo/seed-1"]
    script = Path(dpo["folder"]) / f"{dpo['array_id']}_submission.sh"
    assert f"#SBATCH --dependency=aftercorr:{sft_array}" in script.read_text()
    assert jobs["generate/sft/seed-1"]["job_id"] == jobs["mmlu/sft/seed-1"]["job_id"]  # one eval job
    aggregate = jobs["aggregate"]
    aggregate_script = Path(aggregate["folder"]) / f"{aggregate['job_id']}_submission.sh"
    assert "#SBATCH --dependency=afterok:" in aggregate_script.read_text()

    status = wait_settled(cfg, graph, timeout_s=1800)
    unfinished = {k: (s.state, s.reason) for k, s in status.items() if s.state != "done"}
    assert status["dpo/sft_dpo/seed-1"].state == "failed", unfinished
    assert Path(status["dpo/sft_dpo/seed-1"].log).exists()
    for key in ("generate/sft_dpo/seed-1", "epitome/sft_dpo/seed-1", "mmlu/sft_dpo/seed-1", "aggregate"):
        assert status[key].state == "cancelled", (key, unfinished)
        assert status[key].reason == "dependency dpo/sft_dpo/seed-1 failed", (key, unfinished)
    done = [k for k, s in status.items() if s.state == "done"]
    assert "dpo/sft_dpo/seed-2" in done and "mmlu/sft_dpo/seed-2" in done  # seed 2 went on
    assert "share/baseline/seed-2" in done and "bertscore/sft/seed-1" in done
    assert not (cfg.experiment_dir / "table.csv").exists()
    assert main(["status", str(cfg.experiment_dir)]) == 0
    text = capsys.readouterr().out
    assert "failed" in text and "dependency dpo/sft_dpo/seed-1 failed" in text

    # fixed: the same command submits only what is missing
    blocker.unlink()
    assert main(["submit", *args]) == 0
    capsys.readouterr()
    manifest = read_manifest(cfg.experiment_dir)
    assert len(manifest["submissions"]) == 2
    assert len(manifest["submissions"][-1]["job_ids"]) == 3  # dpo s1, eval sft_dpo s1, aggregate
    assert manifest["jobs"]["sft/sft/seed-1"]["job_id"] == jobs["sft/sft/seed-1"]["job_id"]
    status = wait_settled(cfg, graph, timeout_s=1200)
    assert {s.state for s in status.values()} == {"done"}, status
    table = (cfg.experiment_dir / "table.csv").read_text().splitlines()
    assert [row.split(",")[:2] for row in table[1:]] == [
        ["baseline", "2"], ["sft", "2"], ["sft_dpo", "2"]]


def test_a_partition_sbatch_rejects_is_an_error_with_its_message(slurm_cluster, tmp_path, capsys):
    args = smoke_args(tmp_path / "results", "name=rejected", "cluster.partition=no-such-partition")
    assert main(["submit", *args, "--no-preflight"]) == 2  # past preflight, which catches it too
    err = capsys.readouterr().err
    assert "empo: error: sbatch refused job 'rejected:sft:sft'" in err
    assert "invalid partition" in err.lower() and "nothing was submitted" in err
    assert not (tmp_path / "results" / "rejected" / "manifest.json").exists()
    names = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobName", "-S", "now-10minutes"],
                           capture_output=True, text=True, timeout=30).stdout.split()
    assert not [n for n in names if n.startswith("rejected:")]


def test_a_later_refusal_cancels_the_jobs_already_queued(slurm_cluster, tmp_path, capsys):
    # training and the baseline eval are finished (by hand): the first job queued is the baseline
    # share (small), the next the evaluations, which ask for more memory than the node has
    args = smoke_args(tmp_path / "results", "name=rollback", "eval.metrics=[mmlu]",
                      "cluster.mem_gb=1000000")
    cfg = load_config(args[0], args[1:])
    for stage in build_graph(cfg):
        if stage.kind in ("sft", "dpo"):
            fake_training(stage.directory)
        elif stage.key == "mmlu/baseline/seed-1":
            stage.directory.mkdir(parents=True, exist_ok=True)
            (stage.directory / "metrics.json").write_text(json.dumps({"mmlu": 0.3}))
            mark_done(stage.directory, "mmlu")
    assert main(["submit", *args]) == 2
    err = capsys.readouterr().err
    match = re.search(r"cancelled the 1 job\(s\) queued before it \((\d+)\)", err)
    assert "sbatch refused job 'rollback:eval:sft'" in err and match, err
    deadline = time.time() + 60
    while sacct_state(match.group(1)) not in ("CANCELLED", "CANCELLED+") and time.time() < deadline:
        time.sleep(1)
    assert sacct_state(match.group(1)).startswith("CANCELLED")
    assert not (cfg.experiment_dir / "manifest.json").exists()


def adapter_tensors(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


@pytest.mark.slow
def test_a_preempted_training_job_is_requeued_and_resumes_from_its_checkpoint(slurm_cluster, tmp_path):
    args = smoke_args(tmp_path / "interrupted", "sft.save_steps=4")
    cfg = load_config(args[0], args[1:])
    reference = load_config(args[0], [*args[1:], f"results_dir={tmp_path / 'uninterrupted'}"])
    folder = tmp_path / "jobs"
    jobs = []
    for config in (cfg, reference):
        write_experiment(config)
        stage = build_graph(config).stages["sft/sft/seed-1"]
        ex = make_executor(config, "slurm", folder, job_resources(config, "sft", "preempt:sft"))
        jobs.append((ex.submit(stage_call([stage])), stage.directory))
    (job, out), (ref_job, ref_out) = jobs

    deadline = time.time() + 900
    while not list((out / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        assert not is_done(out), "training finished before it could be interrupted"
        assert time.time() < deadline, "no checkpoint after 900 s"
        time.sleep(0.5)
    job._interrupt()  # submitit's preemption path: SIGTERM (ignored), then USR2 -> requeue
    deadline = time.time() + 1200
    while not (is_done(out) and is_done(ref_out)):
        assert time.time() < deadline, "training did not finish after the requeue"
        time.sleep(2)
    assert "Requeued job" in Path(job.paths.stdout).read_text()       # submitit's log
    log = Path(job.paths.stderr).read_text()                          # the stage's log
    # the step in progress at the signal was saved, and the requeued job went on from there
    stopped = re.search(r"requeue signal: stopping at step (\d+) of", log)
    assert stopped, log[-3000:]
    assert f"resuming from {out / 'checkpoints' / ('checkpoint-' + stopped[1])}" in log
    assert job.result() == {"sft/sft/seed-1": "done"}
    deadline = time.time() + 120
    while sacct_state(job.job_id) != "COMPLETED" and time.time() < deadline:
        time.sleep(1)  # the result is written a moment before the job ends
    assert sacct_state(job.job_id) == "COMPLETED"
    ours, theirs = adapter_tensors(out / "adapter"), adapter_tensors(ref_out / "adapter")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert (ours[name] - theirs[name]).abs().max().item() <= 1e-5, name


@pytest.mark.slow
def test_a_preempted_two_rank_training_job_saves_the_step_in_progress_and_resumes_there(
        slurm_cluster, tmp_path):
    """Two tasks (fake GPUs, gloo): both ranks agree on the step to stop at, save its
    checkpoint together; rank 0 requeues, and the requeued job resumes from that step."""
    args = smoke_args(tmp_path / "results", "sft.save_steps=1000", "sft.logging_steps=1",
                      "cluster.gpus_per_node=2")
    cfg = load_config(args[0], args[1:])
    write_experiment(cfg)
    stage = build_graph(cfg).stages["sft/sft/seed-1"]
    ex = make_executor(cfg, "slurm", tmp_path / "jobs", job_resources(cfg, "sft", "preempt2:sft"))
    job, out = ex.submit(stage_call([stage])), stage.directory
    steps = out / "train_log.jsonl"
    deadline = time.time() + 900
    while not steps.exists() or len(steps.read_text().splitlines()) < 2:
        assert not is_done(out) and time.time() < deadline, "no training step logged in time"
        time.sleep(0.2)
    job._interrupt()
    deadline = time.time() + 1200
    while not is_done(out):
        assert time.time() < deadline, "training did not finish after the requeue"
        time.sleep(2)
    log = Path(job.paths.stderr).read_text()  # rank 0's
    stopped = re.search(r"requeue signal: stopping at step (\d+) of", log)
    assert stopped, log[-3000:]
    assert f"resuming from {out / 'checkpoints' / ('checkpoint-' + stopped[1])}" in log
    assert "Requeued job" in Path(job.paths.stdout).read_text()
    assert job.results()[0] == {"sft/sft/seed-1": "done"}  # rank 0's result


def all_reduce_probe() -> dict:
    """A training job's first step: the torch distributed env from SLURM, then gloo."""
    env = distributed_env()
    import torch
    import torch.distributed as dist

    with scoped(env):
        dist.init_process_group("gloo")
        value = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(value)
        dist.destroy_process_group()
    return {"env": env, "sum": value.item()}


def test_a_two_task_training_job_gets_a_working_torch_distributed_env(slurm_cluster, tmp_path):
    args = smoke_args(tmp_path / "results")
    cfg = load_config(args[0], args[1:])
    resources = dataclasses.replace(job_resources(cfg, "sft", "dist:sft"), tasks_per_node=2)
    job = make_executor(cfg, "slurm", tmp_path / "jobs", resources).submit(all_reduce_probe)
    deadline = time.time() + 300
    while not job.done():
        assert time.time() < deadline, "the 2-task job did not finish in 300 s"
        time.sleep(1)
    results = job.results()
    assert [r["env"]["RANK"] for r in results] == ["0", "1"]
    assert {r["env"]["WORLD_SIZE"] for r in results} == {"2"}
    assert {r["env"]["MASTER_PORT"] for r in results} == {results[0]["env"]["MASTER_PORT"]}
    assert [r["sum"] for r in results] == [3.0, 3.0]
    assert json.dumps(results)


def evaluated_store(tmp_path: Path, *more: str):
    """The smoke experiment on the local cluster with training and MMLU finished by hand: what is
    left is the baseline share and the aggregate (seconds, no model)."""
    args = smoke_args(tmp_path / "results", "eval.metrics=[mmlu]", *more)
    cfg = load_config(args[0], args[1:])
    finish_training_and_mmlu(build_graph(cfg))
    return args, cfg


def test_run_with_the_slurm_executor_waits_and_prints_the_table(slurm_cluster, tmp_path, capsys):
    args, cfg = evaluated_store(tmp_path)
    assert main(["run", *args, "--executor", "slurm"]) == 0
    out, err = capsys.readouterr()
    assert "| baseline | 2 |" in out
    assert read_manifest(cfg.experiment_dir)["jobs"]["aggregate"]["executor"] == "slurm"


def test_cancel_stops_every_queued_job_and_status_says_so(slurm_cluster, tmp_path, capsys):
    args, cfg = evaluated_store(tmp_path, "cluster.slurm_extra={hold: true}")  # queued, held
    assert main(["submit", *args]) == 0
    capsys.readouterr()
    assert main(["status", str(cfg.experiment_dir), "--json"]) == 0
    states = {s["key"]: s["state"] for s in json.loads(capsys.readouterr().out)}
    assert states["share/baseline/seed-2"] == "pending" and states["aggregate"] == "pending"
    assert main(["cancel", str(cfg.experiment_dir)]) == 0
    assert capsys.readouterr().out.startswith("cancelled 2 job(s)")
    deadline = time.time() + 60
    while True:
        assert main(["status", str(cfg.experiment_dir), "--json"]) == 0
        status = {s["key"]: s for s in json.loads(capsys.readouterr().out)}
        if all(s["state"] != "pending" for s in status.values()) or time.time() > deadline:
            break  # (accounting records each job's cancellation a moment apart)
        time.sleep(2)
    assert status["share/baseline/seed-2"]["state"] == "cancelled"
    assert status["share/baseline/seed-2"]["reason"] == "job cancelled"
    assert status["aggregate"]["state"] == "cancelled"
