"""table.md / table.tex: the paper's Table 1 layout, its number style, bold best per direction."""
from __future__ import annotations

from pathlib import Path

import pytest

from empo.metrics import metric_keys
from empo.results.aggregate import Row, Stat, aggregate
from empo.results.table import best_means, fmt_mean, fmt_number, fmt_sd, tex_escape, to_latex, \
    to_markdown

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "results"


def row(variant: str, n: int = 4, **means: float) -> Row:
    stats = {m: Stat(means[m], 0.01, n) if m in means else Stat(None, None, 0)
             for m in metric_keys()}
    return Row(variant, n, n, stats)


# ---------------------------------------------------------------------------- number style

@pytest.mark.parametrize("metric, value, text", [
    ("mmlu", 0.588, ".588"),          # bounded by 1: no leading zero, as in the paper
    ("fbert", 0.8674, ".867"),
    ("diff_er", 0.861, "0.861"),      # diff-EPITOME can exceed 1: leading zero kept
    ("diff_ip", 1.4305, "1.431"),     # half up on the written value, not on the binary float
    ("diff_er", 0.8875, "0.888"),
    ("diff_ex", -0.0001, "0.000"),    # no negative zero
])
def test_means_have_three_decimals_in_the_papers_style(metric, value, text):
    assert fmt_mean(metric, value) == text


@pytest.mark.parametrize("value, text", [(0.0, ".00"), (0.034, ".03"), (0.015, ".02"),
                                         (1.234, "1.23")])
def test_sds_have_two_decimals_without_leading_zero(value, text):
    assert fmt_sd(value) == text


def test_fmt_number_keeps_the_sign():
    assert fmt_number(-0.25, 2, leading_zero=False) == "-.25"
    assert fmt_number(-1.5, 1) == "-1.5"


# ---------------------------------------------------------------------------- bold best

def test_best_is_the_highest_for_mmlu_fbert_and_the_lowest_for_diff_epitome():
    rows = [row("a", mmlu=0.5, diff_er=0.9, fbert=0.7), row("b", mmlu=0.6, diff_er=0.8, fbert=0.6)]
    assert str(best_means(rows, "mmlu")) == "0.600"
    assert str(best_means(rows, "fbert")) == "0.700"
    assert str(best_means(rows, "diff_er")) == "0.800"
    md = to_markdown(rows).splitlines()
    assert md[2].startswith("| `a` | 4 | .500 ± .01 | 0.900 ± .01 |")
    assert "**.700**" in md[2]
    assert "**.600**" in md[3] and "**0.800**" in md[3]


def test_ties_at_the_displayed_precision_are_all_bold():
    rows = [row("a", diff_ex=0.6502), row("b", diff_ex=0.6498), row("c", diff_ex=0.7)]
    md = to_markdown(rows)
    assert md.count("**0.650**") == 2 and "**0.700**" not in md


def test_nothing_is_bold_with_a_single_row_or_for_a_metric_missing_everywhere():
    md = to_markdown([row("sft", mmlu=0.5)])
    assert "**" not in md.splitlines()[2]
    assert best_means([row("a"), row("b")], "mmlu") is None


def test_missing_metric_is_a_dash_and_incomplete_cells_carry_a_dagger():
    flagged = row("sft_dpo", n=3, mmlu=0.5, diff_er=0.7)
    flagged.expected, flagged.missing = 4, ["seed-2"]
    md = to_markdown([flagged]).splitlines()
    assert md[2] == "| SFT+DPO | 3 | .500 ± .01† | 0.700 ± .01† | — | — | — |"
    assert md[-1] == "† incomplete — sft_dpo: seed-2 (n=3 of 4 seeds)"
    tex = to_latex([flagged])
    assert r".500 $\pm$ .01$^\dagger$ & 0.700 $\pm$ .01$^\dagger$ & -- & -- & --" in tex


def test_one_seed_run_shows_its_mean_without_an_undefined_sd():
    single = Row("sft", 1, 1, {m: Stat(0.5, 0.0, 1) if m == "mmlu" else Stat(None, None, 0)
                               for m in metric_keys()})
    assert to_markdown([single]).splitlines()[2].startswith("| SFT | 1 | .500 | — |")
    body = to_latex([single]).split("midrule")[1].split("bottomrule")[0]
    assert r"SFT & 1 & .500 & --" in body and r"\pm" not in body


def test_sweep_point_names_are_code_in_markdown_and_escaped_in_latex():
    name = "sft@lora.lora_alpha=64"
    assert f"| `{name}` |" in to_markdown([row(name, mmlu=0.5)])
    assert r"\texttt{sft@lora.lora\_alpha=64}" in to_latex([row(name, mmlu=0.5)])
    assert tex_escape("a_b&c%d$e#f{g}h~i^j\\") == \
        r"a\_b\&c\%d\$e\#f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}"


# ---------------------------------------------------------------------------- snapshots

def test_markdown_snapshot(table1_store):
    aggregate(table1_store)
    assert (table1_store / "table.md").read_text() == (FIXTURES / "table.md").read_text()


def test_latex_snapshot(table1_store):
    aggregate(table1_store)
    assert (table1_store / "table.tex").read_text() == (FIXTURES / "table.tex").read_text()


def test_snapshot_layout_is_the_papers_table_1():
    lines = (FIXTURES / "table.md").read_text().splitlines()
    assert lines[0] == "| Model | n | MMLU ↑ | diff-ER ↓ | diff-EX ↓ | diff-IP ↓ | FBert ↑ |"
    assert [line.split(" | ")[0] for line in lines[2:5]] == ["| baseline", "| SFT", "| SFT+DPO"]
    # the paper's own bolding pattern: MMLU baseline, FBert SFT, diff-EPITOME SFT+DPO
    assert "**.588**" in lines[2] and "**.867**" in lines[3]
    assert lines[4].count("**") == 6
