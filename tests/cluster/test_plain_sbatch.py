"""README.md's plain-sbatch block, run as written (the smoke experiment instead of table1) on the
local SLURM cluster: every stage of every seed through jobs/*.sbatch, chained with afterok, to
table.csv; `empo status` lists the wrappers' jobs from the manifest."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from empo.config import load_config
from empo.launch.manifest import read_manifest
from empo.launch.status import experiment_status
from empo.pipeline import build_graph

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)


def plain_sbatch_block() -> list[str]:
    """The command lines of the first bash block under README's "### Plain sbatch"."""
    section = (PROJECT_ROOT / "README.md").read_text().split("### Plain sbatch", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_the_readme_block_submits_everything_and_shows_status():
    submit, status = plain_sbatch_block()
    assert submit == "jobs/submit-all.sh configs/experiments/table1.yaml"
    assert status == "empo status results/table1"


@pytest.mark.slurm
@pytest.mark.slow
def test_readme_plain_sbatch_block_runs_the_smoke_graph_to_the_table(slurm_cluster, tmp_path):
    results = tmp_path / "results"
    smoke = (f"configs/experiments/smoke.yaml results_dir={results} "
             "cluster.mem_gb=2")
    env = slurm_cluster.env(PATH=BIN + os.pathsep + os.environ["PATH"], HF_HUB_OFFLINE="1",
                            HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    submit, status = (line.replace("configs/experiments/table1.yaml", smoke)
                      .replace("results/table1", str(results / "smoke"))
                      for line in plain_sbatch_block())
    run = subprocess.run(["bash", "-c", submit], cwd=PROJECT_ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    queued = dict(line.split("\t")[::-1] for line in run.stdout.splitlines() if "\t" in line)
    assert len(queued) == 11, run.stdout   # 2 x (sft, dpo, 3 evals), the shared baseline, aggregate

    cfg = load_config(PROJECT_ROOT / "configs/experiments/smoke.yaml", smoke.split()[1:])
    graph = build_graph(cfg)
    deadline = time.time() + 1500
    while True:
        states = experiment_status(graph, read_manifest(cfg.experiment_dir))
        if not [s for s in states if s.state in ("running", "pending")]:
            break
        assert time.time() < deadline, [(s.key, s.state) for s in states]
        time.sleep(5)
    assert {s.state for s in states} == {"done"}, [(s.key, s.state, s.reason, s.log) for s in states]
    table = (cfg.experiment_dir / "table.csv").read_text().splitlines()
    assert [row.split(",")[:2] for row in table[1:]] == [
        ["baseline", "2"], ["sft", "2"], ["sft_dpo", "2"]]

    shown = subprocess.run(["bash", "-c", status], cwd=PROJECT_ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert queued["sft/sft/seed-1"] in shown.stdout and queued["aggregate"] in shown.stdout
    manifest = read_manifest(cfg.experiment_dir)
    assert manifest["jobs"]["dpo/sft_dpo/seed-2"]["job_id"] == queued["dpo/sft_dpo/seed-2"]
    names = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobName%60", "-j",
                            ",".join(queued.values())], env=env, capture_output=True, text=True,
                           timeout=30).stdout.split()
    assert "smoke:sft:sft:seed-1" in names and "smoke:eval:baseline:seed-2" in names
