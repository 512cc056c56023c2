"""FBert against diff-EPITOME: correlations.csv beside the table, checked against scipy on a run
store scored by the real EPITOME and BERTScore stages (tiny models), and on hand-made items."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from empo.config import load_config
from empo.errors import EmpoError
from empo.results.aggregate import aggregate
from empo.results.correlation import correlations, example_points, pearson, spearman

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "experiments" / "smoke.yaml"
DIMENSIONS = ("er", "ex", "ip")
REPLIES = ["I am so sorry to hear that, it must be hard.", "Wow, that is great news!",
           "Why did you do that?", "ok", "That sounds scary. How are you holding up now?",
           "I love pizza too.", "Congratulations, you earned it!", "Hmm."]


def scipy_or_none(function, x, y) -> float | None:
    """scipy's coefficient; None where it is undefined (a constant side, fewer than 3 points)."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(function(x, y)[0])


def test_pearson_and_spearman_equal_scipy_with_ties():
    rng = random.Random(7)
    for n in (3, 5, 40):
        x = [rng.choice([0.1, 0.2, 0.2, 0.5, 0.9]) + rng.random() * (n > 5) for _ in range(n)]
        y = [rng.choice([0, 1, 1, 4]) for _ in range(n)]
        if len(set(y)) < 2:
            y[0], y[1] = 0, 4
        assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert pearson([1, 2, 3], [5, 5, 5]) is None and spearman([1, 2], [3, 4]) is None


def write_items(run: Path, rows: list[tuple[str, float, tuple[int, ...], tuple[int, ...]]]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "epitome_items.jsonl", "w") as e, open(run / "bertscore_items.jsonl", "w") as b:
        for conv, fbert, pred, ref in rows:
            item = {"conv_id": conv}
            for d, p, r in zip(DIMENSIONS, pred, ref):
                item.update({f"pred_{d}": p, f"ref_{d}": r})
            e.write(json.dumps(item) + "\n")
            b.write(json.dumps({"conv_id": conv, "fbert": fbert, "precision": 0, "recall": 0}) + "\n")


def test_example_points_are_fbert_and_squared_level_differences(tmp_path):
    write_items(tmp_path / "a", [("c1", 0.8, (2, 0, 1), (0, 0, 2)), ("c2", 0.7, (1, 1, 1), (1, 0, 0))])
    assert example_points(tmp_path / "a") == [
        (0.8, {"diff_er": 4.0, "diff_ex": 0.0, "diff_ip": 1.0}),
        (0.7, {"diff_er": 0.0, "diff_ex": 1.0, "diff_ip": 1.0})]
    (tmp_path / "a" / "shared_from.json").write_text("{}")  # a shared baseline: counted once
    assert example_points(tmp_path / "a") == []
    write_items(tmp_path / "b", [("c1", 0.8, (2, 0, 1), (0, 0, 2))])
    (tmp_path / "b" / "bertscore_items.jsonl").write_text(
        json.dumps({"conv_id": "c9", "fbert": 0.8}) + "\n")
    with pytest.raises(EmpoError, match="c1.*c9"):
        example_points(tmp_path / "b")


def test_correlations_per_variant_and_pooled_match_scipy(tmp_path):
    rng = random.Random(3)
    runs = {}
    for variant in ("sft", "sft_dpo"):
        for seed in (1, 2, 3):
            rows = [(f"c{i}", round(rng.random(), 4), tuple(rng.randint(0, 2) for _ in DIMENSIONS),
                     tuple(rng.randint(0, 2) for _ in DIMENSIONS)) for i in range(9)]
            write_items(tmp_path / "runs" / variant / f"seed-{seed}", rows)
            runs.setdefault(variant, {})[seed] = {
                "fbert": rng.random(), **{f"diff_{d}": rng.random() for d in DIMENSIONS}}
    found = {(c.variant, c.level, c.dimension): c for c in correlations(tmp_path, runs,
                                                                         ["sft", "sft_dpo"])}
    for variant, members in (("sft", ["sft"]), ("sft_dpo", ["sft_dpo"]), ("all", ["sft", "sft_dpo"])):
        items = [(json.loads(b), json.loads(e)) for v in members for s in (1, 2, 3)
                 for b, e in zip(*(open(tmp_path / "runs" / v / f"seed-{s}" / name).readlines()
                                   for name in ("bertscore_items.jsonl", "epitome_items.jsonl")))]
        for d in DIMENSIONS:
            x = np.array([b["fbert"] for b, _ in items])
            y = np.array([(e[f"pred_{d}"] - e[f"ref_{d}"]) ** 2 for _, e in items])
            got = found[(variant, "example", f"diff_{d}")]
            assert got.n == len(x) == 27 * len(members)
            assert got.pearson == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
            assert got.spearman == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
            metrics = [runs[v][s] for v in members for s in (1, 2, 3)]
            run = found[(variant, "run", f"diff_{d}")]
            fb, diff = [m["fbert"] for m in metrics], [m[f"diff_{d}"] for m in metrics]
            assert run.n == len(metrics)
            assert run.pearson == pytest.approx(stats.pearsonr(fb, diff)[0], abs=1e-12)


@pytest.fixture()
def scored(tiny_assets: Path, tmp_path: Path):
    """The smoke config on the tiny assets; every run's predictions scored by the real EPITOME and
    BERTScore stages (hand-written predictions: no generation needed)."""
    from empo.evaluate.stages import bertscore_stage, epitome_stage

    a = tiny_assets
    cfg = load_config(SMOKE, [
        f"assets={a}", f"results_dir={tmp_path / 'results'}", f"model.name_or_path={a / 'model'}",
        f"data.source={a / 'ed'}", "eval.metrics=[epitome, bertscore]",
        f"eval.epitome.checkpoints={a / 'epitome'}", f"eval.epitome.encoder={a / 'epitome' / 'encoder'}",
        f"eval.epitome.tokenizer={a / 'epitome' / 'encoder'}", f"eval.bertscore.model={a / 'bertscore'}"])
    rng = random.Random(11)
    for variant in ("baseline", "sft", "sft_dpo"):
        for seed in cfg.seeds:
            run = cfg.experiment_dir / "runs" / variant / f"seed-{seed}"
            run.mkdir(parents=True)
            rows = [{"conv_id": f"hit:{i}_conv:{i}", "emotion": "joyful", "seeker": REPLIES[i - 1],
                     "prompt": [], "reference": REPLIES[i], "prediction": rng.choice(REPLIES)}
                    for i in range(1, len(REPLIES))]
            (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            epitome_stage(cfg, run)
            bertscore_stage(cfg, run)
    return cfg


@pytest.mark.slow
def test_aggregate_writes_correlations_of_the_scored_runs(scored):
    """On runs scored by the stages themselves: the per-item FBert file averages to the metric,
    and correlations.csv holds scipy's coefficients of the stored per-item and per-run values."""
    aggregate(scored.experiment_dir, scored)
    table = list(csv.DictReader(open(scored.experiment_dir / "correlations.csv")))
    assert any(row["pearson"] for row in table if row["level"] == "example")  # not all undefined
    assert {(r["variant"], r["level"]) for r in table} == {
        (v, level) for v in ("baseline", "sft", "sft_dpo", "all") for level in ("example", "run")}
    for row in table:
        members = ["baseline", "sft", "sft_dpo"] if row["variant"] == "all" else [row["variant"]]
        runs = [scored.experiment_dir / "runs" / v / f"seed-{s}" for v in members
                for s in scored.seeds]
        d = row["against"].removeprefix("diff_")
        if row["level"] == "example":
            x, y = [], []
            for run in runs:
                bert = [json.loads(line) for line in open(run / "bertscore_items.jsonl")]
                epi = [json.loads(line) for line in open(run / "epitome_items.jsonl")]
                metrics = json.loads((run / "metrics.json").read_text())
                assert np.mean([b["fbert"] for b in bert]) == pytest.approx(metrics["fbert"])
                x += [b["fbert"] for b in bert]
                y += [(e[f"pred_{d}"] - e[f"ref_{d}"]) ** 2 for e in epi]
        else:
            metrics = [json.loads((run / "metrics.json").read_text()) for run in runs]
            x, y = [m["fbert"] for m in metrics], [m[f"diff_{d}"] for m in metrics]
        assert int(row["n"]) == len(x)
        for name, function in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
            expected = scipy_or_none(function, x, y)
            if expected is None:
                assert row[name] == ""
            else:
                assert float(row[name]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_plot_draws_the_scatter_of_the_scored_runs(scored):
    from empo.results.plots import plot

    written = plot(scored.experiment_dir, scored)
    png = scored.experiment_dir / "plots" / "fbert_vs_diff_epitome.png"
    assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(png.with_suffix(".csv"))))
    runs = len(scored.seeds) * 3
    assert sum(r["level"] == "run" for r in rows) == runs
    assert sum(r["level"] == "example" for r in rows) == runs * (len(REPLIES) - 1)


@pytest.mark.parametrize("dpo, caption", [
    ({}, "Seeds: independent chains (DPO seed s continues the SFT adapter of seed s); beta 0.025."),
    ({"sft_seed": 1, "betas": {2: 0.0249}},
     "Seeds: every DPO run continues the SFT adapter of seed 1; beta per seed 1: 0.025, 2: 0.0249.")])
def test_table_caption_names_the_seed_structure(dpo, caption, make_config, write_store,
                                                table1_runs):
    cfg = make_config(seeds=[1, 2], dpo=dpo)
    runs = {v: {s: table1_runs[v][s] for s in (1, 2)} for v in ("baseline", "sft", "sft_dpo")}
    store = write_store(cfg.experiment_dir, runs, cfg)
    aggregate(store, cfg)
    assert caption in (store / "table.md").read_text()
    assert caption.replace("Seeds: ", "") in (store / "table.tex").read_text()
    assert not (store / "correlations.csv").read_text().count("example")  # no per-item files
