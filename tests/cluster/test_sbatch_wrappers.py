"""jobs/*.sbatch: thin wrappers that run one `empo` stage command inside the configured container.

The local node has no GPUs, so the tests override the wrappers' 2xA100 `#SBATCH` lines on the
sbatch command line (`--gpus-per-node=0`, small CPU/memory), as a user overrides any default.
Instead of `empo` they run a probe executable (EMPO_BIN) that records its argv and environment,
which shows what the wrapper launched, where, and with which torch distributed env.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
JOBS = PROJECT_ROOT / "jobs"
WRAPPERS = ["sft", "dpo", "eval", "aggregate", "pipeline"]
LOCAL = ["--gpus-per-node=0", "--cpus-per-task=1", "--mem=200M", "--time=5"]

PROBE = """\
#!{python}
import json, os, sys
keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID",
        "SLURM_PROCID"]
print(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(),
                  "in_image": os.path.exists("/etc/empo-test-image"),
                  "env": {{k: os.environ.get(k) for k in keys}}}}), flush=True)
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
    """`bash jobs/WRAPPER.sbatch ARGS` outside SLURM with EMPO_DRY_RUN=1."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "EMPO_"))}
    return subprocess.run(["bash", str(JOBS / f"{wrapper}.sbatch"), *args],
                          env={**clean, "EMPO_DRY_RUN": "1", **env}, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)


def dry_command(result: subprocess.CompletedProcess) -> list[str]:
    """The words of the `command:` line a dry run prints."""
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("command:"))
    return shlex.split(line.removeprefix("command:"))


def sbatch_wait(cluster, args: list[str], out: Path, **env: str) -> tuple[int, str, str]:
    """`sbatch --wait ARGS` from the project root; (exit status, job id, job output)."""
    run = subprocess.run(["sbatch", "--parsable", "--wait", f"--output={out}", *args],
                         env=cluster.env(**env), cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=600)
    job_id = run.stdout.strip().split(";")[0]
    return run.returncode, job_id, out.read_text() if out.exists() else run.stderr


def sacct_state(cluster, job_id: str) -> tuple[str, str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode"],
                         env=cluster.env(), capture_output=True, text=True, timeout=30, check=True)
    state, code = out.stdout.strip().splitlines()[0].split("|")
    return state, code


# ---------------------------------------------------------------------------------------------
# syntax and command lines (no cluster)

@pytest.mark.parametrize("script", [f"{w}.sbatch" for w in WRAPPERS] + ["common.sh"])
def test_wrapper_is_valid_bash(script):
    run = subprocess.run(["bash", "-n", str(JOBS / script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("wrapper", ["sft", "dpo", "pipeline"])
def test_wrappers_default_to_two_a100_nodes(wrapper):
    header = [l for l in (JOBS / f"{wrapper}.sbatch").read_text().splitlines()
              if l.startswith("#SBATCH")]
    assert "#SBATCH --gpus-per-node=2" in header
    assert any(l.startswith("#SBATCH --time=") for l in header)
    assert any(l.startswith("#SBATCH --mem=") for l in header)


@pytest.mark.parametrize("wrapper,args,expected", [
    ("sft", ["c.yaml", "seed=1", "lora.r=512"], ["train", "sft", "c.yaml", "lora.r=512", "--seed", "1"]),
    ("dpo", ["c.yaml", "seed=2"], ["train", "dpo", "c.yaml", "--seed", "2"]),
    ("eval", ["c.yaml", "variant=sft_dpo", "seed=3"],
     ["stage", "eval", "c.yaml", "--variant", "sft_dpo", "--seed", "3"]),
    ("eval", ["c.yaml", "variant=sft", "seed=1", "stage=mmlu", "eval.mmlu.batch_size=2"],
     ["stage", "mmlu", "c.yaml", "eval.mmlu.batch_size=2", "--variant", "sft", "--seed", "1"]),
    ("aggregate", ["c.yaml"], ["stage", "aggregate", "c.yaml"]),
    ("aggregate", ["results", "--skip-bad"], ["aggregate", "results", "--skip-bad"]),
    ("pipeline", ["c.yaml", "seeds=[1,2]"], ["run", "c.yaml", "seeds=[1,2]", "--executor", "local"]),
])
def test_dry_run_prints_the_empo_command(wrapper, args, expected):
    assert dry_command(dry_run(wrapper, *args)) == ["empo", *expected]


def test_user_values_stay_whole_words():
    words = dry_command(dry_run("sft", "my config.yaml", "seed=1", "data.system_prompt=Be kind; $HOME 'x'"))
    assert words == ["empo", "train", "sft", "my config.yaml", "data.system_prompt=Be kind; $HOME 'x'",
                     "--seed", "1"]


@pytest.mark.parametrize("wrapper,args,message", [
    ("sft", [], "usage: sbatch"),
    ("sft", ["c.yaml", "seed=one"], "seed must be an integer"),
    ("eval", ["c.yaml", "seed=1"], "needs variant=V"),
])
def test_bad_arguments_are_refused(wrapper, args, message):
    run = dry_run(wrapper, *args)
    assert run.returncode == 2
    assert message in run.stderr


def test_container_runtime_is_checked():
    run = dry_run("sft", "c.yaml", EMPO_CONTAINER_RUNTIME="docker", EMPO_CONTAINER_IMAGE="x")
    assert run.returncode == 2 and "unknown EMPO_CONTAINER_RUNTIME 'docker'" in run.stderr
    run = dry_run("sft", "c.yaml", EMPO_CONTAINER_RUNTIME="apptainer")
    assert run.returncode == 2 and "needs EMPO_CONTAINER_IMAGE" in run.stderr
    run = dry_run("sft", "c.yaml", EMPO_CONTAINER_RUNTIME="apptainer", EMPO_CONTAINER_IMAGE="/no/x.sif")
    assert run.returncode == 2 and "container image not found: /no/x.sif" in run.stderr


def test_apptainer_prefix_binds_project_and_extra_paths(tmp_path):
    sif = tmp_path / "empo.sif"
    sif.touch()
    words = dry_command(dry_run("eval", "c.yaml", "variant=sft", EMPO_CONTAINER_RUNTIME="apptainer",
                                EMPO_CONTAINER_IMAGE=str(sif), EMPO_CONTAINER_BINDS="/data:/data,/scratch"))
    assert words[:2] == ["apptainer", "exec"]
    binds = [words[i + 1] for i, w in enumerate(words) if w == "--bind"]
    assert binds == [f"{PROJECT_ROOT}:{PROJECT_ROOT}", "/data:/data", "/scratch"]
    assert words[words.index(str(sif)) + 1:] == ["empo", "stage", "eval", "c.yaml", "--variant", "sft"]


# ---------------------------------------------------------------------------------------------
# real jobs on the local cluster

@pytest.mark.slurm
def test_unknown_partition_is_rejected_with_sbatchs_message(slurm_cluster):
    run = subprocess.run(["sbatch", *LOCAL, "--partition=no-such-partition", str(JOBS / "sft.sbatch"),
                          "c.yaml"],
                         env=slurm_cluster.env(), capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "Invalid partition name specified" in run.stderr


@pytest.mark.slurm
def test_sft_wrapper_runs_one_task_per_gpu_with_torch_env(slurm_cluster, tmp_path):
    probe = write_probe(tmp_path)
    status, job_id, output = sbatch_wait(
        slurm_cluster, [*LOCAL, "--ntasks-per-node=2", str(JOBS / "sft.sbatch"),
                        "configs/experiments/smoke.yaml", "seed=1", "lora.r=8", "data.system_prompt=a b"],
        tmp_path / "job.out", EMPO_BIN=str(probe), EMPO_TASKS_PER_NODE="2")
    assert status == 0, output
    tasks = sorted(records(output), key=lambda r: r["env"]["RANK"])
    assert len(tasks) == 2, output
    for rank, task in enumerate(tasks):
        assert task["argv"] == ["train", "sft", "configs/experiments/smoke.yaml", "lora.r=8",
                                "data.system_prompt=a b", "--seed", "1"]
        assert task["cwd"] == str(PROJECT_ROOT)   # the submit directory
        env = task["env"]
        assert env["SLURM_JOB_ID"] == job_id
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == (str(rank), str(rank), "2")
        assert env["RANK"] == env["SLURM_PROCID"]
        assert env["MASTER_ADDR"] == slurm_cluster.node
        assert env["MASTER_PORT"] == str(10000 + int(job_id) % 50000)
    assert sacct_state(slurm_cluster, job_id) == ("COMPLETED", "0:0")


@pytest.mark.slurm
def test_job_fails_with_the_commands_exit_status(slurm_cluster, tmp_path):
    probe = write_probe(tmp_path)
    status, job_id, output = sbatch_wait(
        slurm_cluster, [*LOCAL, str(JOBS / "eval.sbatch"), "c.yaml", "variant=sft", "seed=2"],
        tmp_path / "job.out", EMPO_BIN=str(probe), PROBE_EXIT="3")
    assert status == 3, output
    [task] = records(output)
    assert task["argv"] == ["stage", "eval", "c.yaml", "--variant", "sft", "--seed", "2"]
    assert sacct_state(slurm_cluster, job_id) == ("FAILED", "3:0")


@pytest.mark.slurm
def test_wrapper_finds_the_project_when_submitted_from_elsewhere(slurm_cluster, tmp_path):
    probe = write_probe(tmp_path)
    out = tmp_path / "job.out"
    run = subprocess.run(["sbatch", "--parsable", "--wait", f"--output={out}", *LOCAL,
                          os.path.relpath(JOBS / "aggregate.sbatch", tmp_path), str(tmp_path)],
                         env=slurm_cluster.env(EMPO_BIN=str(probe)), cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, out.read_text() if out.exists() else run.stderr
    [task] = records(out.read_text())
    assert task["argv"] == ["aggregate", str(tmp_path)]
    assert task["cwd"] == str(tmp_path)


@pytest.mark.slurm
@pytest.mark.container
def test_wrapper_runs_the_command_inside_the_container(slurm_cluster, container_image, tmp_path):
    probe = write_probe(tmp_path)
    status, job_id, output = sbatch_wait(
        slurm_cluster, [*LOCAL, str(JOBS / "dpo.sbatch"), "configs/experiments/smoke.yaml", "seed=2"],
        tmp_path / "job.out", EMPO_BIN=str(probe), EMPO_CONTAINER_RUNTIME=container_image.runtime,
        EMPO_CONTAINER_IMAGE=container_image.image,
        EMPO_CONTAINER_BINDS=",".join([*container_image.binds, f"{tmp_path}:{tmp_path}"]))
    assert status == 0, output
    [task] = records(output)
    assert task["in_image"], f"{container_image.runtime} did not run the probe in the image"
    assert task["argv"] == ["train", "dpo", "configs/experiments/smoke.yaml", "--seed", "2"]
    assert (task["env"]["RANK"], task["env"]["WORLD_SIZE"], task["env"]["SLURM_JOB_ID"]) == ("0", "1", job_id)


@pytest.mark.slurm
@pytest.mark.slow
def test_sft_wrapper_trains_the_smoke_experiment(slurm_cluster, tmp_path):
    empo = Path(sys.executable).with_name("empo")
    results = tmp_path / "results"
    status, job_id, output = sbatch_wait(
        slurm_cluster, [*LOCAL, "--mem=4G", "--time=30", str(JOBS / "sft.sbatch"),
                        "configs/experiments/smoke.yaml", "seed=1", f"results_dir={results}"],
        tmp_path / "job.out", EMPO_BIN=str(empo), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    assert status == 0, output[-3000:]
    run = results / "smoke" / "runs" / "sft" / "seed-1"
    assert (run / "DONE").exists(), output[-3000:]
    assert (run / "adapter").is_dir()
    assert sacct_state(slurm_cluster, job_id) == ("COMPLETED", "0:0")
