"""jobs/*.sbatch: thin wrappers whose command comes from `empo job run` (the launcher's container
command, srun with one task per GPU, job named <experiment>:<stage>:<variant>:seed-<s>, recorded in
the manifest).

The local node has no GPUs, so the tests override the wrappers' 2xA100 `#SBATCH` lines on the
sbatch command line (`--gpus-per-node=0`, small CPU/memory), as a user overrides any default.
Instead of `python -m empo.cli` inside the job they run a probe executable (EMPO_BIN) that records
its argv and environment, which shows what the wrapper launched, where, and with which torch
distributed env.
"""
from __future__ import annotations

import json
import re
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from empo.launch.manifest import read_manifest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
JOBS = PROJECT_ROOT / "jobs"
SMOKE = "configs/experiments/smoke.yaml"
WRAPPERS = ["train", "sft", "dpo", "eval", "aggregate", "pipeline"]
LOCAL = ["--gpus-per-node=0", "--cpus-per-task=1", "--mem=200M", "--time=5"]
BIN = str(Path(sys.executable).parent)   # `empo` of this environment, as an activated venv has it

PROBE = """\
#!{python}
import json, os, sys, time
keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID",
        "SLURM_PROCID", "SLURM_RESTART_COUNT"]
print(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(),
                  "in_image": os.path.exists("/etc/empo-test-image"),
                  "env": {{k: os.environ.get(k) for k in keys}}}}), flush=True)
if os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
    time.sleep(float(os.environ.get("PROBE_SLEEP", "0")))
sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
"""


def write_probe(directory: Path) -> Path:
    """An executable standing in for `empo`: prints its argv and env as one JSON line."""
    probe = directory / "probe"
    probe.write_text(PROBE.format(python=sys.executable))
    probe.chmod(0o755)
    return probe


def records(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def dry_run(wrapper: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`bash jobs/WRAPPER.sbatch ARGS` outside SLURM with EMPO_DRY_RUN=1 (EMPO_BIN=empo unless given)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "EMPO_"))}
    clean["PATH"] = BIN + os.pathsep + clean["PATH"]
    return subprocess.run(["bash", str(JOBS / f"{wrapper}.sbatch"), *args],
                          env={**clean, "EMPO_DRY_RUN": "1", "EMPO_BIN": "empo", **env},
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)


def dry_command(result: subprocess.CompletedProcess) -> list[str]:
    """The words of the `command:` line a dry run prints."""
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("command:"))
    return shlex.split(line.removeprefix("command:"))


def sbatch_wait(cluster, args: list[str], out: Path, **env: str) -> tuple[int, str, str]:
    """`sbatch --wait ARGS` from the project root; (exit status, job id, job output)."""
    run = subprocess.run(["sbatch", "--parsable", "--wait", f"--output={out}", *args],
                         env=cluster.env(PATH=BIN + os.pathsep + os.environ["PATH"], **env),
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    job_id = run.stdout.strip().split(";")[0]
    return run.returncode, job_id, out.read_text() if out.exists() else run.stderr


def sacct_state(cluster, job_id: str) -> tuple[str, str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode"],
                         env=cluster.env(), capture_output=True, text=True, timeout=30, check=True)
    state, code = out.stdout.strip().splitlines()[0].split("|")
    return state, code


def signal_and_wait(cluster, job_id: str, name: str, out: Path, timeout_s: float) -> None:
    """`scancel --signal=NAME --batch` (what `--signal=B:NAME@lead` sends), then wait until the
    job (requeued by its wrapper) has COMPLETED."""
    subprocess.run(["scancel", f"--signal={name}", "--batch", job_id], env=cluster.env(),
                   check=True, timeout=30)
    deadline = time.time() + timeout_s
    while sacct_state(cluster, job_id)[0] != "COMPLETED":
        assert time.time() < deadline, (sacct_state(cluster, job_id), out.read_text()[-3000:])
        time.sleep(2)


def queue_until_training(cluster, script: str, args: list[str], results: Path,
                         out: Path) -> tuple[str, Path]:
    """sbatch jobs/SCRIPT on the smoke config (no periodic checkpoint, a log row per step) and
    wait until SFT seed 1 has logged two steps; (job id, its run directory)."""
    submit = subprocess.run(
        ["sbatch", "--parsable", f"--output={out}", "--open-mode=append", *LOCAL, "--mem=4G",
         "--time=30", str(JOBS / script), SMOKE, *args, f"results_dir={results}",
         "sft.save_steps=1000", "sft.logging_steps=1"],
        env=cluster.env(PATH=BIN + os.pathsep + os.environ["PATH"], HF_HUB_OFFLINE="1",
                        HF_DATASETS_OFFLINE="1"),
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    run = results / "smoke" / "runs" / "sft" / "seed-1"
    steps = run / "train_log.jsonl"
    deadline = time.time() + 600
    while not steps.exists() or len(steps.read_text().splitlines()) < 2:
        assert time.time() < deadline, out.read_text() if out.exists() else "no output"
        time.sleep(0.2)
    return submit.stdout.strip().split(";")[0], run


def job_name(cluster, job_id: str) -> str:
    """From the controller (it keeps finished jobs MinJobAge seconds): accounting may lag."""
    out = subprocess.run(["scontrol", "show", "job", job_id], env=cluster.env(),
                         capture_output=True, text=True, timeout=30, check=True)
    return next(w for w in out.stdout.split() if w.startswith("JobName=")).removeprefix("JobName=")


# ---------------------------------------------------------------------------------------------
# syntax and command lines (no cluster)

@pytest.mark.parametrize("script", [f"{w}.sbatch" for w in WRAPPERS] + ["submit-all.sh"])
def test_wrapper_is_valid_bash(script):
    run = subprocess.run(["bash", "-n", str(JOBS / script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_wrappers_take_their_command_from_empo_job_run(wrapper):
    text = (JOBS / f"{wrapper}.sbatch").read_text()
    assert f"empo job run {wrapper} \"$@\"" in text
    assert "container" not in "".join(l for l in text.splitlines() if not l.startswith("#"))


@pytest.mark.parametrize("wrapper", ["train", "sft", "dpo", "pipeline"])
def test_wrappers_default_to_two_a100_nodes(wrapper):
    header = [l for l in (JOBS / f"{wrapper}.sbatch").read_text().splitlines()
              if l.startswith("#SBATCH")]
    assert "#SBATCH --gpus-per-node=2" in header
    assert any(l.startswith("#SBATCH --time=") for l in header)
    assert any(l.startswith("#SBATCH --mem=") for l in header)
    assert not [l for l in header if "--wckey" in l]


def test_pipeline_requeues_itself_before_the_time_limit():
    text = (JOBS / "pipeline.sbatch").read_text()
    assert "#SBATCH --signal=B:USR1@300" in text and "#SBATCH --time=24:00:00" in text
    assert "trap requeue USR1" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text


@pytest.mark.parametrize("wrapper,args,expected", [
    ("sft", [SMOKE, "seed=1", "lora.r=512"],
     ["stage", "sft", SMOKE, "lora.r=512", "--variant", "sft", "--seed", "1"]),
    ("dpo", [SMOKE, "seed=2"], ["stage", "dpo", SMOKE, "--variant", "sft_dpo", "--seed", "2"]),
    ("train", [SMOKE, "stage=dpo", "seed=2"],
     ["stage", "dpo", SMOKE, "--variant", "sft_dpo", "--seed", "2"]),
    ("eval", [SMOKE, "variant=sft_dpo", "seed=2"],
     ["stage", "eval", SMOKE, "--variant", "sft_dpo", "--seed", "2"]),
    ("eval", [SMOKE, "variant=sft", "seed=1", "stage=mmlu", "eval.mmlu.batch_size=2"],
     ["stage", "mmlu", SMOKE, "eval.mmlu.batch_size=2", "--variant", "sft", "--seed", "1"]),
    ("aggregate", [SMOKE], ["stage", "aggregate", SMOKE]),
    ("aggregate", ["results", "--skip-bad"], ["aggregate", "results", "--skip-bad"]),
    ("pipeline", [SMOKE, "seeds=[1,2]"], ["run", SMOKE, "seeds=[1,2]", "--executor", "local"]),
])
def test_dry_run_prints_the_empo_command(wrapper, args, expected):
    assert dry_command(dry_run(wrapper, *args)) == ["empo", *expected]


def test_a_bad_requeue_signal_name_stops_the_job_before_its_stage_starts(tmp_path):
    started = tmp_path / "started"
    done = dry_run("sft", SMOKE, "seed=1", f"results_dir={tmp_path / 'results'}",
                   EMPO_DRY_RUN="", EMPO_BIN=f"touch {started}", SUBMITIT_PREEMPT_SIGNAL="BOGUS")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "empo: error: SUBMITIT_PREEMPT_SIGNAL='BOGUS': not a signal name (e.g. USR2)")
    assert not started.exists() and not (tmp_path / "results").exists()


def test_without_empo_bin_the_job_runs_this_python_on_the_package():
    words = dry_command(dry_run("dpo", SMOKE, "seed=1", EMPO_BIN=""))
    assert words[:3] == [str(Path(BIN) / "python3"), "-m", "empo.cli"] or \
        words[1:3] == ["-m", "empo.cli"], words


def test_user_values_stay_whole_words():
    words = dry_command(dry_run("sft", SMOKE, "seed=1", "data.system_prompt=Be kind; $HOME 'x'"))
    assert words == ["empo", "stage", "sft", SMOKE, "data.system_prompt=Be kind; $HOME 'x'",
                     "--variant", "sft", "--seed", "1"]


@pytest.mark.parametrize("wrapper,args,message", [
    ("sft", [], "usage: sbatch"),
    ("sft", [SMOKE, "seed=one"], "seed must be an integer"),
    ("eval", [SMOKE, "seed=1"], "needs variant=V"),
    ("sft", [SMOKE, "lora.rr=8"], "unknown config key 'lora.rr'"),
])
def test_bad_arguments_are_refused(wrapper, args, message):
    run = dry_run(wrapper, *args)
    assert run.returncode == 2
    assert message in run.stderr


def test_container_comes_from_the_config(tmp_path):
    run = dry_run("sft", SMOKE, "cluster.container.runtime=docker")
    assert run.returncode == 2 and "allowed: none, apptainer" in run.stderr
    run = dry_run("sft", SMOKE, "cluster.container.runtime=apptainer")
    assert run.returncode == 2 and "cluster.container.image is required" in run.stderr
    run = dry_run("sft", SMOKE, "cluster.container.runtime=apptainer",
                  "cluster.container.image=/no/x.sif")
    assert run.returncode == 2 and "/no/x.sif does not exist" in run.stderr


def test_apptainer_prefix_is_the_launchers(tmp_path):
    sif = tmp_path / "empo.sif"
    sif.touch()
    words = dry_command(dry_run("eval", SMOKE, "variant=sft", "cluster.container.runtime=apptainer",
                                f"cluster.container.image={sif}", f"results_dir={tmp_path}",
                                "cluster.container.binds=[/data:/data,/scratch]"))
    assert words[1] == "exec"
    binds = words[words.index("--bind") + 1].split(",")
    assert binds[:2] == ["/data:/data", "/scratch:/scratch"]
    assert {f"{tmp_path}/smoke:{tmp_path}/smoke", f"{PROJECT_ROOT}:{PROJECT_ROOT}"} <= set(binds)
    inner = words[words.index(str(sif)) + 1:]
    assert inner[:4] == ["empo", "stage", "eval", SMOKE] and inner[-2:] == ["--variant", "sft"]


# ---------------------------------------------------------------------------------------------
# real jobs on the local cluster

@pytest.mark.slurm
def test_unknown_partition_is_rejected_with_sbatchs_message(slurm_cluster):
    run = subprocess.run(["sbatch", *LOCAL, "--partition=no-such-partition", str(JOBS / "sft.sbatch"),
                          SMOKE],
                         env=slurm_cluster.env(), capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "Invalid partition name specified" in run.stderr


@pytest.mark.slurm
def test_sft_wrapper_runs_one_task_per_gpu_named_and_recorded(slurm_cluster, tmp_path):
    probe = write_probe(tmp_path)
    status, job_id, output = sbatch_wait(
        slurm_cluster, [*LOCAL, "--ntasks-per-node=2", str(JOBS / "sft.sbatch"),
                        SMOKE, "seed=1", "lora.r=8", "data.system_prompt=a b",
                        f"results_dir={tmp_path}/results"],
        tmp_path / "job.out", EMPO_BIN=str(probe), EMPO_TASKS_PER_NODE="2")
    assert status == 0, output
    tasks = sorted(records(output), key=lambda r: r["env"]["RANK"])
    assert len(tasks) == 2, output
    for rank, task in enumerate(tasks):
        assert task["argv"] == ["stage", "sft", SMOKE, "lora.r=8", "data.system_prompt=a b",
                                f"results_dir={tmp_path}/results", "--variant", "sft", "--seed", "1"]
        assert task["cwd"] == str(PROJECT_ROOT)   # the submit directory
        env = task["env"]
        assert env["SLURM_JOB_ID"] == job_id
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == (str(rank), str(rank), "2")
        assert env["RANK"] == env["SLURM_PROCID"]
        assert env["MASTER_ADDR"] == slurm_cluster.node
        assert env["MASTER_PORT"] == str(10000 + int(job_id) % 50000)
    assert sacct_state(slurm_cluster, job_id) == ("COMPLETED", "0:0")
    assert job_name(slurm_cluster, job_id) == "smoke:sft:sft:seed-1"
    entry = read_manifest(tmp_path / "results" / "smoke")["jobs"]["sft/sft/seed-1"]
    assert (entry["job_id"], entry["executor"], entry["stdout"]) == (job_id, "slurm",
                                                                     str(tmp_path / "job.out"))


@pytest.mark.slurm
def test_a_failed_job_keeps_its_status_and_hints_the_same_command(slurm_cluster, tmp_path):
    probe = write_probe(tmp_path)
    args = [SMOKE, "variant=sft", "seed=2", "name=mine", f"results_dir={tmp_path}"]
    status, job_id, output = sbatch_wait(slurm_cluster, [*LOCAL, str(JOBS / "eval.sbatch"), *args],
                                         tmp_path / "job.out", EMPO_BIN=str(probe), PROBE_EXIT="3")
    assert status == 3, output
    [task] = records(output)
    assert task["argv"] == ["stage", "eval", SMOKE, "name=mine", f"results_dir={tmp_path}",
                            "--variant", "sft", "--seed", "2"]
    assert sacct_state(slurm_cluster, job_id) == ("FAILED", "3:0")
    assert f"sbatch jobs/eval.sbatch {shlex.join(args)}" in output   # the user's overrides kept
    assert job_name(slurm_cluster, job_id) == "mine:eval:sft:seed-2"


@pytest.mark.slurm
def test_wrapper_runs_when_submitted_from_elsewhere(slurm_cluster, tmp_path):
    probe = write_probe(tmp_path)
    out = tmp_path / "job.out"
    run = subprocess.run(["sbatch", "--parsable", "--wait", f"--output={out}", *LOCAL,
                          os.path.relpath(JOBS / "aggregate.sbatch", tmp_path), str(tmp_path)],
                         env=slurm_cluster.env(EMPO_BIN=str(probe),
                                               PATH=BIN + os.pathsep + os.environ["PATH"]),
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, out.read_text() if out.exists() else run.stderr
    [task] = records(out.read_text())
    assert task["argv"] == ["aggregate", str(tmp_path)]
    assert task["cwd"] == str(tmp_path)


@pytest.mark.slurm
def test_pipeline_requeues_on_its_signal_and_runs_again(slurm_cluster, tmp_path):
    probe = write_probe(tmp_path)
    out = tmp_path / "job.out"
    submit = subprocess.run(["sbatch", "--parsable", f"--output={out}", "--open-mode=append", *LOCAL,
                             str(JOBS / "pipeline.sbatch"), SMOKE, f"results_dir={tmp_path}"],
                            env=slurm_cluster.env(EMPO_BIN=str(probe), PROBE_SLEEP="60",
                                                  PATH=BIN + os.pathsep + os.environ["PATH"]),
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip().split(";")[0]
    deadline = time.time() + 60
    while not (out.exists() and records(out.read_text())):  # the first run is under way
        assert time.time() < deadline, out.read_text() if out.exists() else "no output"
        time.sleep(1)
    signal_and_wait(slurm_cluster, job_id, "USR1", out, timeout_s=180)
    runs = records(out.read_text())
    assert [r["env"]["SLURM_RESTART_COUNT"] for r in runs] == [None, "1"], runs
    assert runs[-1]["argv"] == ["run", SMOKE, f"results_dir={tmp_path}", "--executor", "local"]
    assert "requeueing job" in out.read_text()


@pytest.mark.slurm
@pytest.mark.container
def test_wrapper_runs_the_command_inside_the_configured_container(slurm_cluster, container_image,
                                                                   tmp_path):
    probe = write_probe(tmp_path)
    binds = "[" + ",".join([*container_image.binds, f"{tmp_path}:{tmp_path}"]) + "]"
    status, job_id, output = sbatch_wait(
        slurm_cluster, [*LOCAL, str(JOBS / "dpo.sbatch"), SMOKE, "seed=2", f"results_dir={tmp_path}",
                        f"cluster.container.runtime={container_image.runtime}",
                        f"cluster.container.image={container_image.image}",
                        f"cluster.container.binds={binds}"],
        tmp_path / "job.out", EMPO_BIN=str(probe))
    assert status == 0, output
    [task] = records(output)
    assert task["in_image"], f"{container_image.runtime} did not run the probe in the image"
    assert task["argv"][:3] == ["stage", "dpo", SMOKE] and task["argv"][-2:] == ["--seed", "2"]
    assert (task["env"]["RANK"], task["env"]["WORLD_SIZE"], task["env"]["SLURM_JOB_ID"]) == ("0", "1", job_id)


@pytest.mark.slurm
@pytest.mark.slow
def test_sft_wrapper_trains_the_smoke_experiment(slurm_cluster, tmp_path):
    results = tmp_path / "results"
    status, job_id, output = sbatch_wait(
        slurm_cluster, [*LOCAL, "--mem=4G", "--time=30", str(JOBS / "sft.sbatch"),
                        SMOKE, "seed=1", f"results_dir={results}"],
        tmp_path / "job.out", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    assert status == 0, output[-3000:]
    run = results / "smoke" / "runs" / "sft" / "seed-1"
    assert (run / "DONE").exists(), output[-3000:]
    assert (run / "adapter").is_dir()
    assert sacct_state(slurm_cluster, job_id) == ("COMPLETED", "0:0")


@pytest.mark.slow
def test_a_training_wrapper_saves_at_its_signal_requeues_and_resumes_from_that_step(
        slurm_cluster, tmp_path):
    """`--signal=B:USR2@300` reaches `empo job run` (the batch step); it passes the signal on to
    the stage's tasks, which save the step in progress, then requeues the job, which resumes."""
    for wrapper in ("sft", "dpo", "train"):  # every training wrapper
        assert "#SBATCH --signal=B:USR2@300" in (JOBS / f"{wrapper}.sbatch").read_text(), wrapper
    results, out = tmp_path / "results", tmp_path / "job.out"
    job_id, run = queue_until_training(slurm_cluster, "sft.sbatch", ["seed=1"], results, out)
    signal_and_wait(slurm_cluster, job_id, "USR2", out, timeout_s=600)
    text = out.read_text()
    stopped = re.search(r"requeue signal: stopping at step (\d+) of", text)
    assert stopped and "requeueing job" in text, text[-3000:]
    assert f"resuming from {run / 'checkpoints' / ('checkpoint-' + stopped[1])}" in text
    assert (run / "DONE").exists()


@pytest.mark.slow
def test_the_pipeline_wrapper_lets_training_save_the_step_in_progress_before_it_requeues(
        slurm_cluster, tmp_path):
    """jobs/pipeline.sbatch's USR1 trap sends the job's own stage tasks (scontrol listpids) the
    signal a stage saves at, waits for them, then requeues; the next run resumes from that step."""
    results, out = tmp_path / "results", tmp_path / "job.out"
    job_id, run = queue_until_training(slurm_cluster, "pipeline.sbatch",
                                       ["variants=[sft]", "seeds=[1]", "eval.metrics=[mmlu]"],
                                       results, out)
    signal_and_wait(slurm_cluster, job_id, "USR1", out, timeout_s=900)
    text = out.read_text()
    saving = re.search(r"USR1 \(time limit near\): (\d+) stage task\(s\) save first", text)
    assert saving and int(saving[1]) >= 1 and "requeueing job" in text, text[-3000:]
    logs = "".join(p.read_text(errors="replace") for p in (results / "smoke").rglob("*.err"))
    stopped = re.search(r"requeue signal: stopping at step (\d+) of", logs)
    assert stopped, logs[-3000:]
    assert f"resuming from {run / 'checkpoints' / ('checkpoint-' + stopped[1])}" in logs
    assert (run / "DONE").exists() and (results / "smoke" / "table.csv").exists()
