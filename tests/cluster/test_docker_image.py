"""The image built from docker/Dockerfile (scripts/docker-image: the Dockerfile's own steps on a
stand-in for the CUDA base) runs the smoke experiment's stages through `cluster.container`
(podman), launched from a working directory outside the source tree: neither the host's venv nor
the checkout is inside the container, so the image's installed `empo` does all the work.
(2-core machine: about 3 minutes, the first build of the image not counted.)"""
from __future__ import annotations

import csv
import json
import re
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

pytestmark = [pytest.mark.container, pytest.mark.slow]
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # job bodies defined in this file

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SMOKE = PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"
SMALLER = ["dpo.num_train_epochs=1", "data.max_eval_examples=8"]  # every stage, less of each


def where_am_i(checkout: str) -> dict:
    """Run as a job: which python and which empo, and is the checkout visible?"""
    import os

    import empo

    return {"python": sys.executable, "empo": empo.__file__,
            "checkout": os.path.exists(os.path.join(checkout, "setup.cfg"))}


def smoke_in_image(directory: Path, image: str) -> Path:
    """configs/experiments/smoke.yaml copied to DIRECTORY/configs, its jobs in `image` (podman);
    its relative paths (results, tiny assets) are then taken from DIRECTORY."""
    data = yaml.safe_load(SMOKE.read_text())
    data["cluster"]["container"] = {"runtime": "podman", "image": image}
    path = directory / "configs" / "smoke.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_job_runs_the_images_python_and_installed_package(docker_image, tmp_path):
    cfg = load_config(smoke_in_image(tmp_path, docker_image.image))
    assert cfg.root == tmp_path  # not the checkout: only the job folder and tmp_path are bound
    ex = make_executor(cfg, "local", tmp_path / "jobs", job_resources(cfg, "aggregate", "probe"))
    assert ex.python.split()[:2] == ["podman", "run"] and ex.python.split()[-2:] == [
        docker_image.image, "python"]
    job = ex.submit(where_am_i, str(PROJECT_ROOT))
    deadline = time.time() + 300
    while not job.done():
        assert time.time() < deadline, f"job {job.job_id} not done after 300 s"
        time.sleep(0.5)
    found = job.result()
    assert found["python"] != sys.executable
    assert "site-packages" in found["empo"] and not found["empo"].startswith(str(PROJECT_ROOT))
    assert found["checkout"] is False


@pytest.mark.timeout(1800)
def test_the_smoke_stages_run_in_the_image_from_outside_the_checkout(docker_image, tmp_path,
                                                                     monkeypatch, capsys):
    smoke_in_image(tmp_path, docker_image.image)
    monkeypatch.chdir(tmp_path)
    start = time.time()
    assert main(["run", "configs/smoke.yaml", *SMALLER, "--executor", "local"]) == 0
    out, err = capsys.readouterr()
    with capsys.disabled():
        print(f"\nsmoke stages in {docker_image.image}: {time.time() - start:.0f} s")
    assert sorted(re.findall(r"start (\S+) \(job", err)) == sorted(
        ["sft/sft/seed-1", "sft/sft/seed-2", "dpo/sft_dpo/seed-1", "dpo/sft_dpo/seed-2",
         "eval/baseline/seed-1", "share/baseline/seed-2", "eval/sft/seed-1", "eval/sft/seed-2",
         "eval/sft_dpo/seed-1", "eval/sft_dpo/seed-2", "aggregate"])
    cfg = load_config(tmp_path / "configs" / "smoke.yaml", SMALLER)
    exp = cfg.experiment_dir
    assert exp.is_relative_to(tmp_path)
    assert all(stage.is_done() for stage in build_graph(cfg))
    table = list(csv.DictReader((exp / "table.csv").open()))
    assert [row["variant"] for row in table] == ["baseline", "sft", "sft_dpo"]
    metrics = ("mmlu", "diff_er", "diff_ex", "diff_ip", "fbert")  # every one measured, 2 seeds
    assert all(row["n"] == "2" and all(row[f"{m}_mean"] for m in metrics) for row in table), table
    assert "| baseline | 2 |" in out and (exp / "table.md").exists()
    manifest = json.loads((exp / "manifest.json").read_text())
    assert manifest["container"] == {"runtime": "podman", "image": docker_image.image}
