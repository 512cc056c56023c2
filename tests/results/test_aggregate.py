"""`aggregate`: the run store's metrics.json files -> table.csv (mean, sample SD, per-metric n)."""
from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

import pytest

from empo.errors import ConfigError, EmpoError
from empo.results.aggregate import aggregate, build_rows, load_rows, mean_sd, read_metrics
from empo.results.table import to_csv

CORE = ["mmlu", "diff_er", "diff_ex", "diff_ip", "fbert"]


def read_table(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as handle:
        return {row["variant"]: row for row in csv.DictReader(handle)}


def header(path: Path) -> list[str]:
    return Path(path).read_text().splitlines()[0].split(",")


# ---------------------------------------------------------------------------- arithmetic

def test_mean_and_sample_sd_are_exact():
    mean, sd = mean_sd([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert sd == pytest.approx(math.sqrt(5 / 3), abs=1e-15)  # ddof=1, not sqrt(5/4)


def test_one_value_has_sd_zero_and_none_has_no_stats():
    assert mean_sd([0.7]) == (0.7, None)  # undefined: an empty cell, not 0
    assert mean_sd([]) == (None, None)


def test_rows_count_runs_and_metrics_separately():
    runs = {"sft": {1: {"mmlu": 0.5, "diff_er": 1.0}, 2: {"diff_er": 2.0}}}
    (row,) = build_rows(runs, ["sft"], expected_seeds=[1, 2, 3], required=["mmlu", "diff_er"])
    assert (row.n, row.expected) == (2, 3)
    assert (row.stats["mmlu"].n, row.stats["diff_er"].n) == (1, 2)
    assert row.stats["mmlu"].sd is None  # one value: no SD
    (line,) = csv.DictReader(io.StringIO(to_csv([row])))
    assert (line["mmlu_mean"], line["mmlu_sd"]) == ("0.5", "")
    assert float(line["diff_er_sd"]) == pytest.approx(0.7071, abs=1e-4)
    assert row.missing == ["seed-3", "mmlu@seed-2"]
    assert row.incomplete("mmlu") and row.incomplete("diff_er")


# ---------------------------------------------------------------------------- table.csv

def test_table_csv_columns_core_metrics_first_then_extras_then_counts(table1_store):
    path = aggregate(table1_store)
    assert path == table1_store / "table.csv"
    columns = header(path)
    expected = ["variant", "n"]
    for metric in CORE + ["epitome_er_pred"]:
        expected += [f"{metric}_mean", f"{metric}_sd"]
    expected += [f"{m}_n" for m in CORE + ["epitome_er_pred"]] + ["missing"]
    assert columns == expected


def test_table_csv_means_and_sds_match_statistics(table1_store, table1_runs):
    table = read_table(aggregate(table1_store))
    assert list(table) == ["baseline", "sft", "sft_dpo"]
    for variant, seeds in table1_runs.items():
        for metric in CORE:
            values = [m[metric] for m in seeds.values() if metric in m]
            mean = float(table[variant][f"{metric}_mean"])
            assert mean == pytest.approx(statistics.mean(values), abs=1e-15)
            if len(values) == 1:  # one value: an empty SD cell, not 0
                assert table[variant][f"{metric}_sd"] == ""
                continue
            sd = float(table[variant][f"{metric}_sd"])
            assert sd == pytest.approx(statistics.stdev(values), abs=1e-15)
    assert float(table["sft"]["diff_er_mean"]) == pytest.approx(0.8875)
    assert float(table["sft"]["diff_er_sd"]) == pytest.approx(0.015)
    assert float(table["baseline"]["mmlu_sd"]) == 0.0


def test_missing_runs_and_metrics_are_counted_and_flagged(table1_store):
    table = read_table(aggregate(table1_store))
    dpo = table["sft_dpo"]
    assert dpo["n"] == "3"                         # seed-4 has no metrics.json
    assert dpo["mmlu_n"] == "2" and dpo["diff_er_n"] == "3"
    assert dpo["missing"] == "seed-4;mmlu@seed-2"
    assert float(dpo["mmlu_mean"]) == pytest.approx((0.57 + 0.575) / 2)
    assert table["sft"]["missing"] == "" and table["sft"]["n"] == "4"


def test_expected_seeds_come_from_the_config(tmp_path, write_store, make_config):
    cfg = make_config(seeds=[1, 2, 3], eval={"metrics": ["epitome"]})
    metrics = {"diff_er": 1.0, "diff_ex": 1.0, "diff_ip": 1.0}
    store = write_store(tmp_path / "results" / "exp", {"sft": {1: metrics}}, cfg)
    table = read_table(aggregate(store, cfg))
    # the other plain variants are expected too (no sweep): rows with n=0, every seed missing
    assert list(table) == ["baseline", "sft", "sft_dpo"]
    assert table["sft"]["missing"] == "seed-2;seed-3"
    assert table["baseline"]["n"] == "0" and table["baseline"]["diff_er_mean"] == ""
    # mmlu and fbert are not in eval.metrics: absent, but not flagged as missing
    assert "mmlu" not in table["sft"]["missing"] and table["sft"]["mmlu_n"] == "0"


def test_without_a_config_every_found_seed_is_expected(tmp_path, write_store):
    m = {"mmlu": 0.5}
    store = write_store(tmp_path / "exp", {"sft": {1: m, 2: m, 5: m}, "baseline": {1: m}})
    table = read_table(aggregate(store))
    assert table["baseline"]["missing"] == "seed-2;seed-5"
    assert table["sft"]["missing"] == ""


def test_variant_order_plain_then_sweep_in_config_order_then_others(tmp_path, write_store,
                                                                    make_config):
    cfg = make_config(sweep={"grid": {"lora.lora_alpha": [256, 64]}, "variants": ["sft"]})
    m = {"mmlu": 0.5}
    runs = {v: {1: m} for v in ["zeta", "sft@lora.lora_alpha=64", "sft_dpo", "baseline",
                                "sft@lora.lora_alpha=256", "alpha"]}
    store = write_store(tmp_path / "results" / "exp", runs, cfg)
    # the config's variants only (issue 22.6): the stray alpha and zeta are named, not read
    in_config_order = ["baseline", "sft_dpo", "sft@lora.lora_alpha=256", "sft@lora.lora_alpha=64"]
    assert list(read_table(aggregate(store, cfg))) == in_config_order
    # without cfg, the store's experiment.yaml gives the same order
    (store / "table.csv").unlink()
    assert list(read_table(aggregate(store))) == in_config_order
    # without either, the non-plain variants are sorted by name
    (store / "experiment.yaml").unlink()
    assert list(read_table(aggregate(store))) == [
        "baseline", "sft_dpo", "alpha", "sft@lora.lora_alpha=256", "sft@lora.lora_alpha=64",
        "zeta"]


def test_sweep_points_without_runs_are_rows_with_n_zero(tmp_path, write_store, make_config):
    cfg = make_config(seeds=[1], sweep={"grid": {"dpo.beta": [0.1, 0.5]}, "variants": ["sft_dpo"]})
    store = write_store(tmp_path / "results" / "exp", {"sft_dpo@dpo.beta=0.1": {1: {"mmlu": 1}}})
    table = read_table(aggregate(store, cfg))
    assert list(table) == ["sft_dpo@dpo.beta=0.1", "sft_dpo@dpo.beta=0.5"]
    assert table["sft_dpo@dpo.beta=0.5"]["n"] == "0"
    assert table["sft_dpo@dpo.beta=0.5"]["missing"] == "seed-1"


def test_extras_keep_only_numbers(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"mmlu": 1, "note": "text", "levels": [1, 2], "ok": true, "x": 0.5}')
    assert read_metrics(path) == {"mmlu": 1.0, "x": 0.5}


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize("text, why", [
    ("{not json", "malformed"),
    ("[1, 2]", "JSON object"),
    ('{"mmlu": "high"}', "'mmlu'"),
    ('{"diff_er": null}', "'diff_er'"),
    ('{"fbert": NaN}', "NaN is not a finite number"),
])
def test_malformed_metrics_is_an_error_naming_the_file(table1_store, write_run, text, why):
    bad = write_run(table1_store, "sft", 5, text) / "metrics.json"
    with pytest.raises(EmpoError) as err:
        aggregate(table1_store)
    assert str(bad) in str(err.value) and why in str(err.value)
    assert not (table1_store / "table.csv").exists()
    assert not list(table1_store.glob(".table*"))  # no temp file left behind


def test_skip_bad_skips_and_lists_the_file(table1_store, write_run, capsys):
    bad = write_run(table1_store, "sft", 5, "{oops") / "metrics.json"
    table = read_table(aggregate(table1_store, skip_bad=True))
    assert str(bad) in capsys.readouterr().err
    assert table["sft"]["n"] == "4" and table["sft"]["missing"] == "seed-5"


def test_an_error_leaves_the_previous_table_untouched(table1_store, write_run):
    aggregate(table1_store)
    before = (table1_store / "table.csv").read_text()
    write_run(table1_store, "sft", 9, "{")
    with pytest.raises(EmpoError):
        aggregate(table1_store)
    assert (table1_store / "table.csv").read_text() == before


def test_a_store_without_runs_is_an_error(tmp_path):
    with pytest.raises(EmpoError, match="no runs/ directory"):
        aggregate(tmp_path)
    (tmp_path / "runs" / "sft" / "seed-1").mkdir(parents=True)
    with pytest.raises(EmpoError, match="no readable"):
        aggregate(tmp_path)
    assert not (tmp_path / "table.csv").exists()


def test_an_invalid_experiment_yaml_is_a_config_error_naming_it(table1_store):
    (table1_store / "experiment.yaml").write_text("lora: {rank: 3}\n")
    with pytest.raises(ConfigError, match=r"experiment\.yaml.*lora\.rank.*did you mean"):
        load_rows(table1_store)


def test_the_table_counts_only_the_configured_variants_and_seeds(tmp_path, write_store,
                                                                 make_config, capsys):
    """A seed directory left from an earlier `seeds` list, one copied in from another run and a
    stray variant are left out of the table (n, means, bold marks) and named in one line
    (issue 22.6)."""
    cfg = make_config(seeds=[1], eval={"metrics": ["mmlu"]})
    store = write_store(tmp_path / "results" / "exp", {
        "baseline": {1: {"mmlu": 0.25}}, "sft": {1: {"mmlu": 0.5}, 2: {"mmlu": 0.9}},
        "sft_dpo": {1: {"mmlu": 0.4}, 7: {"mmlu": 0.99}}, "copied": {1: {"mmlu": 1.0}}}, cfg)
    table = read_table(aggregate(store, cfg))
    assert list(table) == ["baseline", "sft", "sft_dpo"]
    assert table["sft"]["n"] == "1" and float(table["sft"]["mmlu_mean"]) == 0.5
    assert table["sft_dpo"]["n"] == "1" and float(table["sft_dpo"]["mmlu_mean"]) == 0.4
    err = [line for line in capsys.readouterr().err.splitlines() if "ignores" in line]
    assert len(err) == 1
    for run in ("copied/seed-1", "sft/seed-2", "sft_dpo/seed-7"):
        assert run in err[0]
