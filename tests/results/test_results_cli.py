"""`empo aggregate RESULTS_DIR [--skip-bad] [--compare PAPER.csv]` and `empo plot RESULTS_DIR`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from empo.cli import main

PAPER = Path(__file__).resolve().parents[2] / "results" / "paper" / "table1.csv"


def test_aggregate_writes_the_tables_and_prints_the_markdown(table1_store, capsys):
    assert main(["aggregate", str(table1_store)]) == 0
    out = capsys.readouterr().out
    assert out == (table1_store / "table.md").read_text()
    assert out.startswith("| Model | n | MMLU ↑ |")
    for name in ("table.csv", "table.md", "table.tex"):
        assert (table1_store / name).is_file()
    assert not (table1_store / "compare.csv").exists()


def test_aggregate_compare_prints_the_comparison_too(table1_store, capsys):
    assert main(["aggregate", str(table1_store), "--compare", str(PAPER)]) == 0
    out = capsys.readouterr().out
    assert (table1_store / "compare.md").read_text() in out
    assert "| sft | diff-ER ↓ | 0.888 ± .02 (n=4) | 0.888 ± .03 (n=4) |" in out
    assert (table1_store / "compare.csv").is_file()


def test_a_malformed_metrics_file_exits_2_naming_it_unless_skipped(table1_store, write_run,
                                                                     capsys):
    bad = write_run(table1_store, "sft", 7, "{") / "metrics.json"
    assert main(["aggregate", str(table1_store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("empo: error: ") and str(bad) in err
    assert not (table1_store / "table.csv").exists()
    assert main(["aggregate", str(table1_store), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert f"skipped malformed {bad}" in captured.err and "| SFT |" in captured.out


def test_a_directory_that_is_not_a_run_store_exits_2(tmp_path, capsys):
    assert main(["aggregate", str(tmp_path / "nope")]) == 2
    assert "no runs/ directory" in capsys.readouterr().err
    assert main(["plot", str(tmp_path)]) == 2


def test_plot_prints_the_pngs_it_wrote(tmp_path, make_config, write_store, capsys):
    cfg = make_config(seeds=[1, 2], sweep={"grid": {"dpo.beta": [0.01, 0.1]},
                                           "variants": ["sft_dpo"]})
    m = {"diff_er": 1.0, "diff_ex": 0.5, "diff_ip": 0.25}
    store = write_store(cfg.experiment_dir, {f"sft_dpo@dpo.beta={b}": {1: m, 2: m}
                                             for b in (0.01, 0.1)}, cfg)
    assert main(["plot", str(store)]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(store / "plots" / "fig3_diff_epitome_spread_vs_dpo_beta.png")]


def test_the_command_module_imports_nothing_heavy():
    code = ("import sys, empo.commands.results, empo.results.aggregate, empo.results.sweep; "
            "print(sorted({'pandas', 'matplotlib', 'torch', 'numpy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
