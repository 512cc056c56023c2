"""DPO vs KTO vs ORPO end to end: `empo run configs/experiments/smoke_algorithms.yaml` trains SFT,
then DPO and KTO from each seed's SFT adapter and ORPO from the base, evaluates every variant and
writes the table; the new stages reach the plan, the plots and the sbatch wrappers through the
stage registry alone."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from launchutil import PROJECT_ROOT

from empo.config import load_config
from empo.pipeline import build_graph

ALGORITHMS = PROJECT_ROOT / "configs" / "experiments" / "smoke_algorithms.yaml"
PAPER = PROJECT_ROOT / "configs" / "experiments" / "preference_algorithms.yaml"


def empo(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "empo.cli", *args], capture_output=True,
                          text=True, cwd=PROJECT_ROOT, timeout=timeout)


@pytest.mark.slow  # tier: trains 8 adapters, evaluates 9 runs (14 min on the loaded 2-core box)
@pytest.mark.timeout(2400)
def test_smoke_algorithms_runs_end_to_end_with_a_row_per_algorithm(tmp_path):
    results = tmp_path / "results"
    done = empo("run", str(ALGORITHMS), f"results_dir={results}", "--parallel", "1",
                timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = load_config(ALGORITHMS, [f"results_dir={results}"])
    exp = cfg.experiment_dir
    graph = build_graph(cfg)
    assert all(stage.is_done() for stage in graph)
    trained = sorted(s.key for s in graph if s.kind in ("sft", "dpo", "kto", "orpo"))
    assert trained == sorted(f"{k}/{v}/seed-{s}" for k, v in (("sft", "sft"), ("dpo", "sft_dpo"),
                                                               ("kto", "sft_kto"), ("orpo", "orpo"))
                             for s in (1, 2))
    # KTO continues the same seed's SFT adapter; ORPO starts from the base model
    assert graph.stages["kto/sft_kto/seed-2"].deps == ("sft/sft/seed-2",)
    orpo = graph.stages["orpo/orpo/seed-1"]
    assert orpo.deps == () and orpo.adapter is None
    rows = {row["variant"]: row for row in csv.DictReader((exp / "table.csv").open())}
    assert list(rows) == ["baseline", "sft", "sft_dpo", "sft_kto", "orpo"]
    for row in rows.values():
        assert row["n"] == "2" and row["fbert_mean"] and row["mmlu_mean"] and row["diff_er_mean"]
    table = (exp / "table.md").read_text()
    assert "| SFT+KTO | 2 |" in table and "| ORPO | 2 |" in table
    for variant in ("sft_kto", "orpo"):
        for seed in (1, 2):
            log = [json.loads(line) for line in
                   (exp / f"runs/{variant}/seed-{seed}/train_log.jsonl").read_text().splitlines()]
            assert log and all("loss" in row for row in log if "train_runtime" not in row)
    assert "rewards/margins" in (exp / "runs/orpo/seed-1/train_log.jsonl").read_text()

    plots = empo("plot", str(exp))
    assert plots.returncode == 0, plots.stderr
    assert all((exp / "plots" / f"train_{v}.png").exists() for v in ("sft_kto", "orpo"))


@pytest.mark.slow  # tier: the plan CLI imports deepspeed (~20 s each)
@pytest.mark.parametrize("stage,reference", [("kto", "KTO reference      adapter_copy"),
                                             ("orpo", None)])
def test_empo_plan_plans_the_new_stages_from_their_registry_facts(stage, reference):
    plan = empo("plan", str(PAPER), "--stage", stage)
    assert plan.returncode == 0, plan.stderr
    assert f"stage {stage}," in plan.stdout and "(×2 sequences: chosen + rejected)" in plan.stdout
    assert (reference in plan.stdout) if reference else "ORPO reference" not in plan.stdout


def test_submit_all_queues_kto_and_orpo_through_the_generic_training_wrapper(tmp_path):
    from empo.launch.jobs import plan_units
    from empo.launch.wrapper import wrapper_call

    cfg = load_config(PAPER, [f"results_dir={tmp_path}"])
    calls = {unit.key: wrapper_call(unit, str(PAPER), [], PROJECT_ROOT / "jobs")
             for unit in plan_units(build_graph(cfg)) if unit.kind in ("kto", "orpo")}
    assert calls and all(wrapper == "train" for wrapper, _ in calls.values())
    assert {tuple(args[1:-1]) for _, args in calls.values()} == {("stage=kto",), ("stage=orpo",)}
