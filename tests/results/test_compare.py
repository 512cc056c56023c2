"""`--compare`: ours vs the paper's Table 1, the difference in units of the paper's SD."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from empo.errors import EmpoError
from empo.metrics import metric_keys
from empo.results.aggregate import Row, Stat, aggregate
from empo.results.compare import compare_rows, read_table_csv, to_markdown

PAPER = Path(__file__).resolve().parents[2] / "results" / "paper" / "table1.csv"

# DESIGN §7 / paper Table 1 (mean, sd), n = 4 seeds
TABLE1 = {
    "baseline": {"mmlu": (.588, 0), "diff_er": (.861, 0), "diff_ex": (1.113, 0),
                 "diff_ip": (1.431, 0), "fbert": (.804, 0)},
    "sft": {"mmlu": (.580, 0), "diff_er": (.888, .03), "diff_ex": (.657, .03),
            "diff_ip": (.750, .02), "fbert": (.867, 0)},
    "sft_dpo": {"mmlu": (.572, .03), "diff_er": (.660, .01), "diff_ex": (.627, .02),
                "diff_ip": (.648, .07), "fbert": (.728, .03)},
}


def test_the_papers_table_ships_with_table1_numbers():
    paper = read_table_csv(PAPER)
    assert list(paper) == ["baseline", "sft", "sft_dpo"]
    for variant, metrics in TABLE1.items():
        assert list(paper[variant]) == list(metric_keys())
        for metric, (mean, sd) in metrics.items():
            assert paper[variant][metric] == Stat(pytest.approx(mean), pytest.approx(sd), 4)


def test_difference_in_units_of_the_papers_sd_or_absolute_where_it_is_zero():
    ours = Row("sft", 4, 4, {m: Stat(None, None, 0) for m in metric_keys()})
    ours.stats["diff_er"] = Stat(0.948, 0.01, 4)
    ours.stats["mmlu"] = Stat(0.570, 0.002, 3)
    paper = {"sft": {"diff_er": Stat(0.888, 0.03, 4), "mmlu": Stat(0.580, 0.0, 4),
                     "fbert": Stat(0.867, 0.0, 4)}}
    er, mmlu, fbert = compare_rows([ours], paper)
    assert (er.unit, er.diff, er.diff_sd) == ("sd", pytest.approx(0.06), pytest.approx(2.0))
    assert (mmlu.unit, mmlu.diff, mmlu.diff_sd) == ("abs", pytest.approx(-0.01), None)
    assert (fbert.unit, fbert.diff, fbert.ours) == ("missing", None, None)
    md = to_markdown([er, mmlu, fbert]).splitlines()
    assert md[2] == ("| sft | diff-ER ↓ | 0.948 ± .01 (n=4) | 0.888 ± .03 (n=4) | +0.060 "
                     "| +2.00 SD |")
    assert md[3] == ("| sft | MMLU ↑ | .570 ± .00 (n=3) | .580 ± .00 (n=4) | -0.010 "
                     "| abs (ref SD 0) |")
    assert md[4] == "| sft | FBert ↑ | — | .867 ± .00 (n=4) | — | missing |"


def test_aggregate_writes_compare_csv_and_md(table1_store):
    aggregate(table1_store, compare=PAPER)
    with open(table1_store / "compare.csv") as handle:
        rows = {(r["variant"], r["metric"]): r for r in csv.DictReader(handle)}
    assert len(rows) == 15
    er = rows[("sft", "diff_er")]   # ours 0.8875 vs 0.888 ± 0.03
    assert float(er["diff"]) == pytest.approx(-0.0005)
    assert float(er["diff_in_paper_sd"]) == pytest.approx(-0.0005 / 0.03)
    assert er["unit"] == "sd" and er["ours_n"] == "4" and er["paper_n"] == "4"
    base = rows[("baseline", "mmlu")]
    assert (base["unit"], base["diff_in_paper_sd"], float(base["diff"])) == ("abs", "", 0.0)
    assert rows[("sft_dpo", "mmlu")]["ours_n"] == "2"
    md = (table1_store / "compare.md").read_text()
    assert "| table1.csv |" in md.splitlines()[0]


def test_an_aggregate_table_can_be_the_reference(table1_store):
    table = aggregate(table1_store)
    comparisons = compare_rows(*_rows_and_reference(table1_store, table))
    assert comparisons and all(c.diff == 0 for c in comparisons)
    counted = {(c.variant, c.metric): c.paper.n for c in comparisons}
    assert counted[("sft_dpo", "mmlu")] == 2    # <metric>_n wins over n


def _rows_and_reference(store: Path, table: Path):
    from empo.results.aggregate import load_rows

    rows, _ = load_rows(store)
    return rows, read_table_csv(table)


def test_a_malformed_reference_names_file_line_and_column(tmp_path, table1_store):
    bad = tmp_path / "paper.csv"
    bad.write_text("variant,n,mmlu_mean,mmlu_sd\nsft,4,high,0.1\n")
    with pytest.raises(EmpoError, match=r"paper\.csv:2: column 'mmlu_mean'"):
        aggregate(table1_store, compare=bad)
    assert not (table1_store / "table.csv").exists()
    bad.write_text("model,mmlu\nsft,1\n")
    with pytest.raises(EmpoError, match="expected columns"):
        read_table_csv(bad)
    with pytest.raises(EmpoError, match="cannot read"):
        read_table_csv(tmp_path / "absent.csv")
