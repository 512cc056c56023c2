"""`plot`: the paper's figures and training curves as PNGs with their data as CSVs beside them."""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from empo.results.aggregate import aggregate
from empo.results.plots import plot, read_train_log

EPITOME = ("diff_er", "diff_ex", "diff_ip")
PANEL = (400, 640)  # pixels (height, width) of one panel


def png_shape(path: Path) -> tuple[int, ...]:
    from matplotlib.image import imread

    return imread(path).shape


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def metrics_for(seed: int, x: float) -> dict[str, float]:
    """Distinct, reproducible values for each (point, seed)."""
    return {"mmlu": 0.5 + x / 10000 + seed / 100, "diff_er": 0.6 + seed / 10,
            "diff_ex": 0.7 - x / 10000,
            "diff_ip": 0.8 + seed * x / 100000, "fbert": 0.85}


@pytest.fixture
def sweep_store(tmp_path, make_config, write_store):
    """make(grid_key, values, variant, seeds) -> a store with experiment.yaml and every run."""
    def make(key: str, values: list, variant: str, seeds: list[int]) -> Path:
        cfg = make_config(seeds=seeds, sweep={"grid": {key: values}, "variants": [variant]})
        runs = {f"{variant}@{key}={v}": {s: metrics_for(s, float(v)) for s in seeds}
                for v in values}
        return write_store(cfg.experiment_dir, runs, cfg)
    return make


def test_fig1_mmlu_vs_alpha_png_and_csv_match_the_aggregate(sweep_store):
    store = sweep_store("lora.lora_alpha", [64, 256, 1024], "sft", [1, 2, 3])
    table = {r["variant"]: r for r in read_csv(aggregate(store))}
    pngs = plot(store)
    fig1 = store / "plots" / "fig1_mmlu_vs_lora_alpha.png"
    assert pngs == [fig1]                      # no other sweep, no training logs
    assert png_shape(fig1) == (*PANEL, 4)
    rows = read_csv(fig1.with_suffix(".csv"))
    assert [r["lora.lora_alpha"] for r in rows] == ["64", "256", "1024"]
    for r in rows:
        assert r["metric"] == "mmlu" and r["series"] == "SFT"
        expected = table[r["variant"]]
        assert float(r["mean"]) == pytest.approx(float(expected["mmlu_mean"]), abs=1e-15)
        assert float(r["sd"]) == pytest.approx(float(expected["mmlu_sd"]), abs=1e-15)
        assert r["n"] == expected["mmlu_n"] == "3"


def test_fig2_diff_epitome_vs_rank_has_er_ex_ip_per_point(sweep_store, capsys):
    store = sweep_store("lora.r", [16, 256, 2048], "sft", [1, 2])
    table = {r["variant"]: r for r in read_csv(aggregate(store))}
    (png,) = plot(store)
    assert png.name == "fig2_diff_epitome_vs_lora_r.png" and png_shape(png) == (*PANEL, 4)
    rows = read_csv(png.with_suffix(".csv"))
    assert [(r["lora.r"], r["metric"]) for r in rows[:3]] == [("16", m) for m in EPITOME]
    assert len(rows) == 9
    for r in rows:
        assert float(r["mean"]) == pytest.approx(float(table[r["variant"]][f"{r['metric']}_mean"]))
    err = capsys.readouterr().err
    assert "fig1_mmlu_vs_lora_alpha skipped: the sweep does not vary lora.lora_alpha" in err


def test_fig3_spread_of_average_diff_epitome_over_seeds_vs_beta(sweep_store):
    seeds = [1, 2, 3, 4]
    store = sweep_store("dpo.beta", [0.01, 0.1], "sft_dpo", seeds)
    (png,) = plot(store)
    assert png.name == "fig3_diff_epitome_spread_vs_dpo_beta.png" and png_shape(png) == (*PANEL, 4)
    per_seed = read_csv(png.with_name(png.stem + "_seeds.csv"))
    assert len(per_seed) == 8
    summary = read_csv(png.with_suffix(".csv"))
    assert [r["dpo.beta"] for r in summary] == ["0.01", "0.1"]
    for r in summary:
        beta = float(r["dpo.beta"])
        averages = [statistics.mean(metrics_for(s, beta)[m] for m in EPITOME) for s in seeds]
        assert float(r["mean"]) == pytest.approx(statistics.mean(averages))
        assert float(r["sd"]) == pytest.approx(statistics.stdev(averages))
        assert (float(r["min"]), float(r["max"])) == pytest.approx((min(averages), max(averages)))
        assert r["n"] == "4"
    first = per_seed[0]
    assert float(first["diff_epitome"]) == pytest.approx(
        statistics.mean(float(first[m]) for m in EPITOME))


def test_the_x_value_comes_from_the_config_not_the_name(sweep_store, make_config, capsys):
    store = sweep_store("lora.r", [16, 32], "sft", [1])
    (store / "experiment.yaml").unlink()      # run names alone do not make a sweep
    assert plot(store) == []
    assert "sweep figures skipped" in capsys.readouterr().err
    cfg = make_config(seeds=[1], sweep={"grid": {"lora.r": [16, 32]}, "variants": ["sft"]})
    (png,) = plot(store, cfg)                 # the config given by the caller (the pipeline)
    assert [r["lora.r"] for r in read_csv(png.with_suffix(".csv"))][::3] == ["16", "32"]


def test_fig2_over_zipped_rank_and_alpha_is_one_line_with_r_on_the_x_axis(
        make_config, write_store):
    ranks, alphas = [16, 256, 2048], [4, 64, 512]
    cfg = make_config(seeds=[1, 2], eval={"metrics": ["epitome"]},
                      sweep={"zip": {"lora.r": ranks, "lora.lora_alpha": alphas},
                             "variants": ["sft"]})
    runs = {f"sft@lora.r={r},lora.lora_alpha={a}": {s: metrics_for(s, float(r)) for s in (1, 2)}
            for r, a in zip(ranks, alphas)}
    store = write_store(cfg.experiment_dir, runs, cfg)
    pngs = plot(store)
    fig2 = store / "plots" / "fig2_diff_epitome_vs_lora_r.png"
    assert fig2 in pngs and png_shape(fig2) == (*PANEL, 4)
    rows = read_csv(fig2.with_suffix(".csv"))
    assert {r["series"] for r in rows} == {"SFT [lora.lora_alpha=4…512]"}   # one line, not three
    assert [r["lora.r"] for r in rows][::3] == ["16", "256", "2048"]
    assert [r["variant"] for r in rows][::3] == list(runs)
    fig1 = read_csv(store / "plots" / "fig1_mmlu_vs_lora_alpha.csv")   # α moves with r there
    assert [r["lora.lora_alpha"] for r in fig1] == ["4", "64", "512"]
    assert {r["series"] for r in fig1} == {"SFT [lora.r=16…2048]"}


def write_log(run: Path, rows: list[dict], tail: str = "") -> None:
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_training_curves_loss_and_dpo_rewards_per_seed(table1_store, write_run, capsys):
    for seed in (1, 2):
        write_log(write_run(table1_store, "sft", seed),
                  [{"loss": 2.0 / k, "step": k, "epoch": k / 10} for k in range(1, 6)]
                  + [{"train_loss": 1.0, "train_runtime": 3.0}])          # summary line: ignored
        write_log(write_run(table1_store, "sft_dpo", seed),
                  [{"loss": 0.69 - k / 100, "rewards/margins": k / 10, "rewards/accuracies": 0.5,
                    "step": k} for k in range(1, 4)],
                  tail='{"loss": 0.5, "st')                                  # killed mid-write
    pngs = plot(table1_store)
    assert [p.name for p in pngs] == ["train_sft.png", "train_sft_dpo.png"]
    assert png_shape(pngs[0]) == (*PANEL, 4)
    assert png_shape(pngs[1]) == (PANEL[0], 3 * PANEL[1], 4)   # loss, margins, accuracies
    sft = read_csv(pngs[0].with_suffix(".csv"))
    assert len(sft) == 10 and {r["seed"] for r in sft} == {"seed-1", "seed-2"}
    assert sft[0]["loss"] == "2.0" and sft[0]["rewards/margins"] == ""
    dpo = read_csv(pngs[1].with_suffix(".csv"))
    assert [r["rewards/margins"] for r in dpo[:3]] == ["0.1", "0.2", "0.3"]
    err = capsys.readouterr().err
    assert "train_log.jsonl:4: unreadable line skipped" in err
    assert "sweep figures skipped" in err


def test_read_train_log_keeps_trl_keys_of_rows_with_a_step(tmp_path):
    path = tmp_path / "train_log.jsonl"
    path.write_text('{"loss": 1, "grad_norm": 3, "step": 1}\n\n{"loss": 2}\n'
                    '{"rewards/margins": 0.1, "rewards/accuracies": 1, "step": 2}\n')
    assert read_train_log(path) == [
        {"step": 1.0, "loss": 1.0},
        {"step": 2.0, "rewards/margins": 0.1, "rewards/accuracies": 1.0}]


def test_nothing_to_plot_is_noted_not_an_error(table1_store, capsys):
    assert plot(table1_store) == []
    err = capsys.readouterr().err
    assert "sweep figures skipped" in err and "training curves skipped" in err
    assert list((table1_store / "plots").iterdir()) == []


def test_points_without_the_metric_are_left_out(sweep_store, capsys):
    store = sweep_store("lora.lora_alpha", [64], "sft", [1])
    path = store / "runs" / "sft@lora.lora_alpha=64" / "seed-1" / "metrics.json"
    path.write_text(json.dumps({"diff_er": 1.0}))
    assert plot(store) == []
    assert "no mmlu results for the lora.lora_alpha sweep points" in capsys.readouterr().err
