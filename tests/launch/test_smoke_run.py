"""The embedded default, end to end: `empo run configs/experiments/smoke.yaml` runs the whole graph
(2 seeds, real stages on the tiny offline assets) with submitit's local executor and prints the
table; running it again starts nothing. (Measured on the 2-core CI machine: about 3 minutes.)"""
from __future__ import annotations

import csv
import json
import re
import shutil
import time

import pytest
from launchutil import PROJECT_ROOT

from empo.cli import main
from empo.config import load_config
from empo.pipeline import build_graph

SMOKE = PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_smoke_experiment_runs_end_to_end_and_a_rerun_starts_nothing(smoke_run, capsys):
    results, done, took = smoke_run
    args = [str(SMOKE), f"results_dir={results}"]
    assert done.returncode == 0, done.stderr[-3000:]
    out, err = done.stdout, done.stderr
    with capsys.disabled():  # shown with -s; the budget is 10 minutes on 2 cores
        print(f"\nsmoke run: {took:.0f} s")
    cfg = load_config(args[0], args[1:])
    exp = cfg.experiment_dir
    # every job of the graph ran once: 2 SFT, 2 DPO, 5 evaluations, 1 share, the aggregate
    assert sorted(re.findall(r"start (\S+) \(job", err)) == sorted(
        ["sft/sft/seed-1", "sft/sft/seed-2", "dpo/sft_dpo/seed-1", "dpo/sft_dpo/seed-2",
         "eval/baseline/seed-1", "share/baseline/seed-2", "eval/sft/seed-1", "eval/sft/seed-2",
         "eval/sft_dpo/seed-1", "eval/sft_dpo/seed-2", "aggregate"])
    assert all(stage.is_done() for stage in build_graph(cfg))
    assert out.strip().startswith((exp / "table.md").read_text().strip())  # then the paths
    assert f"table: {exp / 'table.csv'}" in out
    rows = {row["variant"]: row for row in csv.DictReader((exp / "table.csv").open())}
    assert list(rows) == ["baseline", "sft", "sft_dpo"]
    for row in rows.values():
        assert row["n"] == "2"
        for metric in ("mmlu", "diff_er", "diff_ex", "diff_ip", "fbert"):
            assert row[f"{metric}_mean"] != ""
    for metric in ("mmlu", "diff_er", "diff_ex", "diff_ip", "fbert"):  # evaluated once (greedy)
        assert float(rows["baseline"][f"{metric}_sd"]) == 0.0
    shared = json.loads((exp / "runs/baseline/seed-2/shared_from.json").read_text())
    assert shared["shared_from"] == "seed-1"
    for variant in ("sft", "sft_dpo"):
        for seed in (1, 2):
            assert (exp / f"runs/{variant}/seed-{seed}/adapter/adapter_config.json").exists()
            assert (exp / f"runs/{variant}/seed-{seed}/predictions.jsonl").exists()
    manifest = json.loads((exp / "manifest.json").read_text())
    data = manifest["data"]  # what the data was: source, revision, per split the dialogues read
    assert data["revision"] is None and data["splits"]["train"]["eligible"] > 0
    assert data["splits"]["test"]["dialogues"] >= data["splits"]["test"]["eligible"] > 0
    assert len({e["job_id"] for e in manifest["jobs"].values()}) == 11

    before = (exp / "table.csv").stat().st_mtime_ns
    start = time.time()
    assert main(["run", *args]) == 0
    out, err = capsys.readouterr()
    assert re.findall(r"start (\S+) \(job", err) == []
    assert out.strip().startswith((exp / "table.md").read_text().strip())  # then the paths
    assert f"table: {exp / 'table.csv'}" in out
    assert (exp / "table.csv").stat().st_mtime_ns == before  # finished results never rewritten
    assert time.time() - start < 60


@pytest.mark.slow
def test_status_after_a_config_change_names_what_the_next_run_redoes(smoke_run, tmp_path, capsys):
    """A finished experiment whose recorded config then changes (dpo.beta): `empo status` calls
    DPO and what reads it not run, says what changed, and blames no job."""
    results, done, _ = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    copy = tmp_path / "smoke"
    shutil.copytree(results / "smoke", copy, symlinks=True)
    recorded = (copy / "experiment.yaml").read_text()
    assert f"results_dir: {results}\n" in recorded and "  beta: 0.025\n" in recorded
    (copy / "experiment.yaml").write_text(recorded.replace(
        f"results_dir: {results}\n", f"results_dir: {tmp_path}\n").replace(
        "  beta: 0.025\n", "  beta: 0.05\n", 1))
    capsys.readouterr()
    assert main(["status", str(copy), "--json"]) == 0
    rows = {row["key"]: row for row in json.loads(capsys.readouterr().out)}
    assert {row["state"] for row in rows.values()} == {"done", "not-run"}
    stale = sorted(key for key, row in rows.items() if row["state"] == "not-run")
    assert stale == sorted([*(f"{kind}/sft_dpo/seed-{s}" for kind in (
        "dpo", "generate", "epitome", "bertscore", "mmlu") for s in (1, 2)), "aggregate"])
    assert rows["dpo/sft_dpo/seed-1"]["reason"] == (
        "finished under another identity, changed since: dpo.beta; the next run or submit redoes it")
