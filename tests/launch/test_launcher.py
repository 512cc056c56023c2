"""The launcher facade: executors validated up front, resources from cluster profiles, container
commands (every value quoted), and the sbatch script submitit writes from them."""
from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import pytest
import submitit

from launchutil import PROJECT_ROOT
from empo.config import load_config
from empo.errors import ConfigError, LaunchError
from empo.launch import EXECUTORS, check_executor, check_launch, job_resources, make_executor
from empo.launch.backends import backend
from empo.launch.containers import check_container, container_command
from empo.launch.run import local_gpus

needs_slurm_client = pytest.mark.skipif(shutil.which("sbatch") is None or shutil.which("srun") is None,
                                        reason="SLURM client commands (sbatch, srun) not installed")


def test_an_unknown_executor_is_refused_listing_the_allowed_ones(make_cfg):
    with pytest.raises(LaunchError, match="unknown executor 'kubernetes'; allowed: local, debug, slurm"):
        check_launch(make_cfg(), "kubernetes")
    assert check_executor("local") == "local" and EXECUTORS == ("local", "debug", "slurm")


def test_an_unknown_runtime_is_refused_listing_the_allowed_ones(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="allowed: none, apptainer, pyxis, podman, charliecloud"):
        make_cfg(cluster__container__runtime="docker")
    cfg = make_cfg()
    cfg.cluster.container.runtime = "docker"  # built in code, past the config's own check
    with pytest.raises(LaunchError, match="unknown runtime 'docker'; allowed: none, apptainer"):
        check_container(cfg, "local")


def test_a_container_needs_an_image_that_exists(make_cfg, tmp_path):
    with pytest.raises(LaunchError, match="cluster.container.image is required with runtime 'apptainer'"):
        check_container(make_cfg(cluster__container__runtime="apptainer"), "slurm")
    missing = tmp_path / "empo.sif"
    cfg = make_cfg(cluster__container__runtime="apptainer", cluster__container__image=str(missing))
    with pytest.raises(LaunchError, match=f"{missing} does not exist"):
        check_container(cfg, "slurm")
    cfg = make_cfg(cluster__container__runtime="charliecloud",
                   cluster__container__image=str(tmp_path / "no-such-image-dir"))
    with pytest.raises(LaunchError, match="does not exist"):
        check_container(cfg, "local")
    with pytest.raises(LaunchError, match="runtime pyxis: the local executor cannot start it; "
                       "use --executor slurm"):
        check_container(make_cfg(cluster__container__runtime="pyxis",
                                 cluster__container__image="nvcr.io#nvidia/pytorch:24.05-py3"), "local")


def test_resources_come_from_the_cluster_profile():
    cfg = load_config(PROJECT_ROOT / "configs/experiments/table1.yaml")
    sft = job_resources(cfg, "sft", "x")
    assert (sft.nodes, sft.tasks_per_node, sft.gpus_per_node) == (1, 2, 2)  # one task per GPU
    assert sft.timeout_min == cfg.cluster.time["sft"] and sft.partition == cfg.cluster.partition
    evaluation = job_resources(cfg, "eval", "x")
    assert (evaluation.tasks_per_node, evaluation.gpus_per_node) == (1, 1)
    assert evaluation.mem_gb == cfg.cluster.mem_gb // 2
    aggregate = job_resources(cfg, "aggregate", "x")
    assert (aggregate.gpus_per_node, aggregate.cpus_per_task) == (0, 1)
    h100 = load_config(PROJECT_ROOT / "configs/experiments/table1.yaml",
                       ["cluster.profile=configs/cluster/h100x8.yaml", "cluster.nodes=2"])
    dpo = job_resources(h100, "dpo", "x")
    assert (dpo.nodes, dpo.tasks_per_node, dpo.gpus_per_node) == (2, 8, 8)


def binds_of(command: str, flag: str) -> list[str]:
    words = shlex.split(command)
    return [words[i + 1] for i, w in enumerate(words) if w == flag]


def test_apptainer_podman_and_charliecloud_wrap_python_with_every_value_quoted(make_cfg, tmp_path):
    image = tmp_path / "my images" / "empo.sif"
    image.parent.mkdir()
    image.touch()
    cfg = make_cfg(cluster__container__runtime="apptainer", cluster__container__image=str(image),
                   cluster__container__binds=["/data/ed:/ed:ro", "/scratch"])
    folder = tmp_path / "jobs folder"
    apptainer = container_command(cfg, [folder, cfg.experiment_dir], gpus=True).python
    words = shlex.split(apptainer)
    assert words[:3] == ["apptainer", "exec", "--nv"] or words[1:3] == ["exec", "--nv"]
    assert words[-2:] == [str(image), "python"]
    spec = binds_of(apptainer, "--bind")[0].split(",")
    assert spec[:2] == ["/data/ed:/ed:ro", "/scratch:/scratch"]
    assert f"{folder}:{folder}" in spec and f"{cfg.experiment_dir}:{cfg.experiment_dir}" in spec
    assert "'" in apptainer  # the path with a space is quoted, not split
    no_gpu = shlex.split(container_command(cfg, [folder], gpus=False).python)
    assert "--nv" not in no_gpu

    podman = container_command(make_cfg(cluster__container__runtime="podman",
                                        cluster__container__image="localhost/empo:1"),
                               [folder], gpus=False).python
    words = shlex.split(podman)
    assert words[:3] == ["podman", "run", "--rm"] and "--env-host" not in words  # keeps image PATH
    passed = {words[i + 1] for i, w in enumerate(words) if w == "--env"}
    assert {"SLURM_*", "SUBMITIT_*", "RANK", "MASTER_ADDR"} <= passed
    assert f"{folder}:{folder}" in binds_of(podman, "-v")
    assert words[-2:] == ["localhost/empo:1", "python"]

    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    ch = container_command(make_cfg(cluster__container__runtime="charliecloud",
                                    cluster__container__image=str(rootfs)), [folder], gpus=False).python
    words = shlex.split(ch)
    assert words[0] == "env" and words[1].startswith("USER=") and words[2] == "ch-run"
    assert f"{folder}:{folder}" in binds_of(ch, "-b")
    assert words[-3:] == [str(rootfs), "--", "python"]


def test_pyxis_goes_through_srun_arguments(make_cfg, tmp_path):
    cfg = make_cfg(cluster__container__runtime="pyxis", cluster__offline=False,
                   cluster__container__image="nvcr.io#nvidia/pytorch:24.05-py3")
    command = container_command(cfg, [tmp_path], gpus=True)
    assert command.python == "python"
    assert command.srun_args[0] == "--container-image=nvcr.io#nvidia/pytorch:24.05-py3"
    assert command.srun_args[1] == f"--container-mounts={tmp_path}:{tmp_path}"
    cache = tmp_path.parent / f"{tmp_path.name}-hf"  # offline jobs also see the Hub cache
    cache.mkdir()
    offline = make_cfg(cluster__container__runtime="pyxis", cluster__offline=True,
                       cluster__hf_home=str(cache),
                       cluster__container__image="nvcr.io#nvidia/pytorch:24.05-py3")
    mounts = container_command(offline, [tmp_path], gpus=True).srun_args[1]
    assert mounts == f"--container-mounts={tmp_path}:{tmp_path},{cache}:{cache}"


def test_the_host_venv_python_runs_inside_when_the_venv_is_bound(make_cfg, tmp_path):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    cfg = make_cfg(cluster__container__runtime="charliecloud", cluster__container__image=str(rootfs),
                   cluster__container__binds=[str(Path(sys.prefix).resolve())])
    words = shlex.split(container_command(cfg, [], gpus=False).python)
    assert words[-1] == sys.executable


def test_the_local_executor_gets_the_job_resources_and_container(make_cfg, tmp_path):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    cfg = make_cfg(cluster__container__runtime="charliecloud", cluster__container__image=str(rootfs),
                   cluster__time={"sft": 7})
    ex = make_executor(cfg, "local", tmp_path / "jobs", job_resources(cfg, "sft", "t:sft"),
                       visible_gpus=(3,))
    assert isinstance(ex, submitit.LocalExecutor)
    assert ex.parameters["timeout_min"] == 7 and ex.parameters["visible_gpus"] == (3,)
    assert ex.python.startswith("env USER=") and "ch-run" in ex.python


def test_local_jobs_share_the_gpus_this_process_sees(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # inside an allocation of GPUs 2 and 3
    assert local_gpus(2) == [2, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_gpus(2) == [0, 1] and local_gpus(0) == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert local_gpus(1) == [0]


@needs_slurm_client
def test_the_sbatch_script_has_resources_dependency_requeue_and_container(tmp_path):
    image = tmp_path / "empo.sif"
    image.touch()
    cfg = load_config(PROJECT_ROOT / "configs/experiments/table1.yaml",
                      ["cluster.account=nlp", "cluster.qos=high", "cluster.container.runtime=apptainer",
                       f"cluster.container.image={image}", f"results_dir={tmp_path}/results",
                       "cluster.slurm_extra={constraint: a100-80gb}"])
    ex = make_executor(cfg, "slurm", tmp_path / "jobs", job_resources(cfg, "sft", "table1:sft"),
                       dependency="afterok:12:13")
    script = backend("slurm").script(ex, 1)  # what submitit writes (the dry run's renderer)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=nlp", "#SBATCH --qos=high",
                 "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=2", "#SBATCH --gpus-per-node=2",
                 f"#SBATCH --time={cfg.cluster.time['sft']}", "#SBATCH --mem=200GB",
                 "#SBATCH --dependency=afterok:12:13", "#SBATCH --kill-on-invalid-dep=yes",
                 "#SBATCH --requeue", "#SBATCH --constraint=a100-80gb", "#SBATCH --job-name=table1:sft"):
        assert line in script.splitlines(), line
    assert job_resources(cfg, "sft", "x").max_requeues == cfg.cluster.max_requeues
    srun = next(line for line in script.splitlines() if line.startswith("srun"))
    python = srun[srun.index("apptainer"):]
    assert shlex.split(python)[:3] == ["apptainer", "exec", "--nv"] and str(image) in python
    cpu = make_executor(cfg, "slurm", tmp_path / "jobs", job_resources(cfg, "aggregate", "a"))
    assert "gpus-per-node" not in backend("slurm").script(cpu, 1)
    assert "dependency" not in backend("slurm").script(cpu, 1)
