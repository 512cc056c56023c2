"""Stages inside a real container runtime (podman with runc, or charliecloud's ch-run) through the
launcher's python= prefix: the image of scripts/container-image, with the host venv bound in."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import yaml

from empo.cli import main
from empo.config import load_config
from empo.launch import job_resources, make_executor
from empo.pipeline import build_graph
from fakes import finish_training_and_mmlu

pytestmark = [pytest.mark.container]
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # job bodies defined in this file


def where_am_i() -> dict:
    """Run as a job: is this process inside the test image?"""
    import os

    return {"in_image": os.path.exists("/etc/empo-test-image"), "python": sys.executable}


def container_config(tmp_path: Path, image, **extra) -> Path:
    """An experiment in tmp_path whose jobs run in the test image; metrics: MMLU only."""
    data = {"name": "boxed", "seeds": [1, 2], "results_dir": str(tmp_path / "results"),
            "eval": {"metrics": ["mmlu"]},
            "cluster": {"cpus_per_task": 1, "time": {"aggregate": 5},
                        "container": {"runtime": image.runtime, "image": image.image,
                                      "binds": list(image.binds)}}}
    data.update(extra)
    path = tmp_path / "configs" / "boxed.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(data))
    return path


def wait(job, timeout_s: float):
    deadline = time.time() + timeout_s
    while not job.done():
        assert time.time() < deadline, f"job {job.job_id} not done after {timeout_s} s"
        time.sleep(0.5)
    return job.result()


def test_a_job_runs_inside_the_image_with_the_host_venv(container_image, tmp_path):
    cfg = load_config(container_config(tmp_path, container_image))
    ex = make_executor(cfg, "local", tmp_path / "jobs", job_resources(cfg, "aggregate", "probe"))
    assert ex.python.split()[0] in ("podman", "env")
    result = wait(ex.submit(where_am_i), 300)
    assert result == {"in_image": True, "python": sys.executable}


def test_pipeline_stages_run_in_the_container_and_write_the_run_store(container_image, tmp_path,
                                                                      capsys):
    path = container_config(tmp_path, container_image)
    cfg = load_config(path)
    # training and MMLU finished (by hand): the share and the aggregate run, inside the container
    finish_training_and_mmlu(build_graph(cfg))
    assert main(["run", str(path), "--executor", "local"]) == 0
    out, err = capsys.readouterr()
    assert "start share/baseline/seed-2" in err and "start aggregate" in err
    assert "| baseline | 2 |" in out
    shared = json.loads((cfg.experiment_dir / "runs/baseline/seed-2/shared_from.json").read_text())
    assert shared["shared_from"] == "seed-1"
    assert (cfg.experiment_dir / "table.csv").exists()


@pytest.mark.slurm
def test_a_slurm_job_runs_inside_the_image(container_image, slurm_cluster, tmp_path):
    cfg = load_config(container_config(tmp_path, container_image, cluster={
        "partition": slurm_cluster.partitions[0], "cpus_per_task": 1, "mem_gb": 1,
        "time": {"aggregate": 5},
        "container": {"runtime": container_image.runtime, "image": container_image.image,
                      "binds": list(container_image.binds)}}))
    ex = make_executor(cfg, "slurm", tmp_path / "jobs", job_resources(cfg, "aggregate", "probe"))
    assert wait(ex.submit(where_am_i), 300) == {"in_image": True, "python": sys.executable}
