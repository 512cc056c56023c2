"""Preflight and `empo submit --dry-run` against the real local SLURM cluster: each failure kind
(asset, partition, account, qos, GPU gres, nodes, walltime, planned GPU memory) is reported in
one exit-2 message and nothing reaches the queue; the dry-run scripts' #SBATCH lines are the
ones the submitted jobs get."""
from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest

from empo.cli import main
from empo.launch.manifest import read_manifest

pytestmark = [pytest.mark.slurm]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SMOKE = PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"
TABLE1 = PROJECT_ROOT / "configs" / "experiments" / "table1.yaml"
LOCAL_PROFILE = PROJECT_ROOT / "configs" / "cluster" / "local.yaml"


RUN = uuid.uuid4().hex[:6]  # job names unique to this session (accounting keeps older runs)


def smoke_args(results: Path, *more: str) -> list[str]:
    return [str(SMOKE), f"results_dir={results}", f"cluster.profile={LOCAL_PROFILE}",
            "cluster.executor=slurm", *more]


def queue_is_empty_of(prefix: str) -> bool:
    queued = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True,
                            timeout=30).stdout.split()
    known = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobName", "-S", "now-30minutes"],
                           capture_output=True, text=True, timeout=30).stdout.split()
    return not [n for n in queued + known if n.startswith(prefix)]


def problems(capsys) -> dict[str, str]:
    err = capsys.readouterr().err
    assert err.startswith("empo: error: preflight found"), err
    lines = [line.strip() for line in err.splitlines()[1:]]
    return {line.split(":")[0]: line for line in lines}


def test_every_preflight_failure_kind_is_caught_before_anything_is_queued(slurm_cluster, tmp_path,
                                                                          capsys):
    subprocess.run(["scontrol", "update", "partitionname=batch", "maxtime=30"], check=True,
                   timeout=30)
    try:
        args = smoke_args(tmp_path / "results", f"name=pf-kinds-{RUN}", "cluster.partition=batch",
                          "cluster.account=no-such-account", "cluster.qos=no-such-qos",
                          "cluster.gpus_per_node=8", "cluster.nodes=2", "cluster.time.sft=60",
                          "cluster.gpu_memory_gb=1", f"eval.bertscore.model={tmp_path}/none")
        assert main(["submit", *args]) == 2
        found = problems(capsys)
    finally:
        subprocess.run(["scontrol", "update", "partitionname=batch", "maxtime=UNLIMITED"],
                       check=True, timeout=30)
    assert set(found) == {"eval.bertscore.model", "cluster.time", "cluster.nodes",
                          "cluster.gpus_per_node", "cluster.account", "cluster.qos",
                          "cluster.gpu_memory_gb"}, found
    assert "MaxTime" in found["cluster.time"] and "have 2 (gres/gpu)" in found["cluster.gpus_per_node"]
    assert "`empo plan`" in found["cluster.gpu_memory_gb"]
    assert main(["submit", *smoke_args(tmp_path / "results", f"name=pf-kinds-{RUN}",
                                       "cluster.partition=nowhere")]) == 2
    assert "partition nowhere does not exist — use one of: debug, batch" in \
        problems(capsys)["cluster.partition"]
    assert queue_is_empty_of(f"pf-kinds-{RUN}:")
    assert not (tmp_path / "results" / f"pf-kinds-{RUN}").exists()


def test_table1_with_its_assets_missing_lists_every_one_and_queues_nothing(slurm_cluster, tmp_path,
                                                                          capsys):
    args = [str(TABLE1), f"results_dir={tmp_path}", "cluster.partition=debug", f"name=t1-{RUN}",
            f"cluster.hf_home={tmp_path / 'empty-cache'}"]
    assert main(["submit", *args]) == 2
    found = problems(capsys)
    assert set(found) == {"model.name_or_path", "data.source", "eval.epitome.checkpoints",
                          "eval.epitome.encoder", "eval.bertscore.model", "eval.mmlu.tasks"}, found
    assert "cais/mmlu" in found["eval.mmlu.tasks"]
    assert queue_is_empty_of(f"t1-{RUN}:")


def _sbatch_lines(text: str, folder: str) -> list[str]:
    lines = [line.replace(folder, "FOLDER") for line in text.splitlines()
             if line.startswith("#SBATCH")]
    lines = [re.sub(r"(--dependency=)\S+", r"\1DEP", line) for line in lines]
    # the comment's token is each submitted job's own (the dry run writes `dry-run` there)
    return [re.sub(r"(--comment=empo:[0-9a-f]{8}:)[^:]+(:[0-9a-f]{12})$", r"\1TOKEN\2", line)
            for line in lines]


def test_dry_run_scripts_are_what_the_jobs_get(slurm_cluster, tmp_path, capsys):
    args = smoke_args(tmp_path / "results", f"name=pf-dry-{RUN}")
    assert main(["submit", "--dry-run", *args]) == 0
    out = capsys.readouterr().out
    assert f"on {slurm_cluster.node}" in out  # sbatch --test-only's expected start
    dry = tmp_path / "results" / f"pf-dry-{RUN}" / "dry-run"
    scripts = sorted(dry.glob("*.sbatch"))
    assert len(scripts) == 7 and queue_is_empty_of(f"pf-dry-{RUN}:")
    assert not (tmp_path / "results" / f"pf-dry-{RUN}" / "manifest.json").exists()

    assert main(["submit", *args]) == 0
    capsys.readouterr()
    try:
        manifest = read_manifest(tmp_path / "results" / f"pf-dry-{RUN}")
        by_name = {}
        for job in manifest["jobs"].values():
            job_id = job.get("array_id") or job["job_id"]
            by_name[job_id] = job["folder"]
        got = {}
        for job_id, folder in by_name.items():
            text = subprocess.run(["scontrol", "write", "batch_script", job_id, "-"],
                                  capture_output=True, text=True, timeout=30, check=True).stdout
            lines = _sbatch_lines(text, folder)
            got[next(line for line in lines if "--job-name" in line)] = lines
        for script in scripts:
            want = _sbatch_lines(script.read_text(), str(dry / "jobs"))
            name = next(line for line in want if "--job-name" in line)
            assert got[name] == want, script.name
    finally:
        main(["cancel", str(tmp_path / "results" / f"pf-dry-{RUN}")])
        capsys.readouterr()


@pytest.mark.slow
def test_a_table1_shaped_graph_runs_with_the_requests_of_a_2xA100_node(slurm_cluster, tmp_path,
                                                                       capsys):
    """2 GPUs per node (fake gres of scripts/slurm-cluster), one task per GPU with ZeRO-2 over
    gloo on CPU for training, one GPU per eval: the requests a 2×A100 node needs (~4-5 min)."""
    if "gpu:2" not in subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True,
                                     timeout=30).stdout:
        pytest.skip("the cluster declares no gres/gpu:2 (SLURM_CLUSTER_GPUS=0)")
    args = smoke_args(tmp_path / "results", f"name=gpu-shaped-{RUN}", "cluster.gpus_per_node=2",
                      "cluster.mem_gb=8", "seeds=[1]", "sft.deepspeed=zero2", "dpo.deepspeed=zero2",
                      "dpo.num_train_epochs=1", "eval.metrics=[bertscore]")
    assert main(["run", *args, "--executor", "slurm"]) == 0
    assert "| SFT+DPO | 1 |" in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "results" / f"gpu-shaped-{RUN}")
    ids = {key.split("/")[0]: job["job_id"] for key, job in manifest["jobs"].items()}
    for kind, tres in (("sft", "gres/gpu=2"), ("dpo", "gres/gpu=2"), ("generate", "gres/gpu=1")):
        got = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "AllocTRES,NTasks", "-j",
                              ids[kind]], capture_output=True, text=True, timeout=30).stdout
        assert tres in got, (kind, got)
    log = (tmp_path / "results" / f"gpu-shaped-{RUN}" / "runs" / "sft" / "seed-1")
    assert log.is_dir()
