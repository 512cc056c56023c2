"""Site options reach every sbatch script: no --wckey unless cluster.wckey says so, CPU-only jobs on
cluster.cpu_partition, mail settings, and cluster.slurm_extra passing any other option through."""
from __future__ import annotations

import shutil

import pytest

from launchutil import PROJECT_ROOT
from empo.config import load_config
from empo.launch import job_resources, make_executor
from empo.launch.backends import backend

needs_sbatch = pytest.mark.skipif(shutil.which("sbatch") is None,
                                  reason="SLURM client command sbatch not installed")
TABLE1 = PROJECT_ROOT / "configs/experiments/table1.yaml"


def script(tmp_path, overrides: list[str], kind: str) -> list[str]:
    cfg = load_config(TABLE1, [f"results_dir={tmp_path}/results", *overrides])
    ex = make_executor(cfg, "slurm", tmp_path / "jobs", job_resources(cfg, kind, f"table1:{kind}"))
    return backend("slurm").script(ex, 1).splitlines()  # what submitit writes (the dry run's)


@needs_sbatch
@pytest.mark.parametrize("kind", ["sft", "dpo", "eval", "share", "aggregate"])
def test_no_wckey_by_default(tmp_path, kind):
    assert not [line for line in script(tmp_path, [], kind) if "--wckey" in line]


@needs_sbatch
def test_a_site_wckey_mail_and_extra_options_go_to_every_job(tmp_path):
    overrides = ["cluster.wckey=nlp-proj", "cluster.mail_user=alice@example.org",
                 "cluster.mail_type=END,FAIL", "cluster.slurm_extra={constraint: a100, exclusive: true}"]
    for kind in ("sft", "aggregate"):
        lines = script(tmp_path, overrides, kind)
        for line in ("#SBATCH --wckey=nlp-proj", "#SBATCH --mail-user=alice@example.org",
                     "#SBATCH --mail-type=END,FAIL", "#SBATCH --constraint=a100",
                     "#SBATCH --exclusive"):
            assert line in lines, (kind, line)


@needs_sbatch
def test_cpu_only_jobs_use_the_cpu_partition_when_set(tmp_path):
    with_cpu = ["cluster.cpu_partition=cpu"]
    for kind in ("share", "aggregate"):
        assert "#SBATCH --partition=cpu" in script(tmp_path, with_cpu, kind)
        assert "#SBATCH --partition=gpu" in script(tmp_path, [], kind)  # table1's profile
    for kind in ("sft", "dpo", "eval"):
        assert "#SBATCH --partition=gpu" in script(tmp_path, with_cpu, kind)


def test_resources_as_sbatch_options_for_the_plain_wrappers():
    cfg = load_config(TABLE1, ["cluster.cpu_partition=cpu", "cluster.mail_type=FAIL",
                               "cluster.slurm_extra={exclusive: true, comment: null}"])
    sft = job_resources(cfg, "sft", "table1:sft:sft:seed-1").sbatch_options()
    assert sft[:2] == ["--job-name=table1:sft:sft:seed-1", f"--time={cfg.cluster.time['sft']}"]
    assert "--gpus-per-node=2" in sft and "--partition=gpu" in sft
    assert not [o for o in sft if o.startswith(("--wckey", "--comment"))]
    assert sft[-2:] == ["--mail-type=FAIL", "--exclusive"]
    aggregate = job_resources(cfg, "aggregate", "a").sbatch_options()
    assert "--partition=cpu" in aggregate and "--gpus-per-node=0" in aggregate
