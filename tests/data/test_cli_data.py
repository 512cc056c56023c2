"""`empo data stats|sft|eval|preference`: exports, stats, and the bad-input table of issue 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from empo.cli import main
from empo.data.dialogue import ED_HEADER
from empo.data.ed import load_dialogues
from empo.data.emotions import default_table_path
from empo.data.synthetic import EMOTIONS


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- exports on the synthetic corpus


def test_preference_export(corpus, tmp_path, capsys):
    out = tmp_path / "pref.jsonl"
    code, stdout, _ = run(capsys, "data", "preference", "--source", str(corpus), "--split",
                          "train", "--epochs", "3", "--seed", "1", "--out", str(out))
    assert code == 0 and f"{out}: " in stdout
    rows = read_jsonl(out)
    n = len(load_dialogues(str(corpus), "train").dialogues)
    assert len(rows) == 3 * n and [r["epoch"] for r in rows[::n]] == [0, 1, 2]
    row = rows[0]
    assert list(row) == ["conv_id", "emotion", "epoch", "prompt", "chosen", "rejected",
                         "rejected_conv_id", "rejected_emotion"]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][-1]["role"] == "user"
    assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"


def test_preference_export_options(corpus, tmp_path, capsys):
    table = tmp_path / "mine.tsv"
    table.write_text("emotion\topposite\n" + "".join(
        f"{e}\t{EMOTIONS[(i + 1) % 32]}\n" for i, e in enumerate(EMOTIONS)))
    out = tmp_path / "pref.jsonl"
    code, _, _ = run(capsys, "data", "preference", "--source", str(corpus), "--epochs", "1",
                     "--seed", "0", "--table", str(table), "--sampling", "uniform",
                     "--system-prompt", "You are an empathetic listener.", "--out", str(out))
    assert code == 0
    for row in read_jsonl(out):
        assert row["prompt"][0] == {"role": "system", "content": "You are an empathetic listener."}
        assert row["rejected_emotion"] == EMOTIONS[(EMOTIONS.index(row["emotion"]) + 1) % 32]


def test_sft_export(corpus, tmp_path, capsys):
    out = tmp_path / "sft.jsonl"
    code, _, _ = run(capsys, "data", "sft", "--source", str(corpus), "--out", str(out))
    dialogues = load_dialogues(str(corpus), "train").dialogues
    rows = read_jsonl(out)
    assert code == 0 and len(rows) == len(dialogues)
    assert [m["content"] for m in rows[0]["messages"]] == dialogues[0].turns
    assert set(rows[0]) == {"conv_id", "emotion", "messages"}


def test_eval_export(corpus, tmp_path, capsys):
    out = tmp_path / "eval.jsonl"
    code, _, _ = run(capsys, "data", "eval", "--source", str(corpus), "--split", "test",
                     "--system-prompt", "S", "--out", str(out))
    rows = read_jsonl(out)
    assert code == 0 and len(rows) == len(load_dialogues(str(corpus), "test").dialogues)
    assert set(rows[0]) == {"conv_id", "emotion", "prompt", "seeker", "reference"}
    assert rows[0]["prompt"][0] == {"role": "system", "content": "S"}
    assert rows[0]["seeker"] == rows[0]["prompt"][-1]["content"]


def test_stats_json(corpus, capsys):
    code, stdout, _ = run(capsys, "data", "stats", "--source", str(corpus), "--json")
    report = json.loads(stdout)["splits"]
    assert code == 0 and list(report) == ["train", "valid", "test"]
    for split, s in report.items():
        loaded = load_dialogues(str(corpus), split)
        assert s["dialogues"] == s["eligible_dialogues"] == len(loaded.dialogues)
        assert s["utterances"] == loaded.utterances
        assert s["malformed_rows_dropped"] == loaded.malformed > 0
        assert sorted(s["emotions"]) == sorted(EMOTIONS)


def test_stats_table_with_emotion_table(corpus, capsys):
    table = default_table_path()
    code, stdout, _ = run(capsys, "data", "stats", "--source", str(corpus), "--splits", "train",
                          "--table", str(table))
    assert code == 0
    assert "== train" in stdout and "malformed rows dropped" in stdout
    assert f"table {table}: fits this split" in stdout
    line = next(x for x in stdout.splitlines() if x.startswith("afraid "))
    assert line.split() == ["afraid", "6", "6", "angry"]


def test_data_commands_import_no_torch(corpus, tmp_path):
    code = ("import sys; from empo.cli import main\n"
            f"assert main(['data', 'preference', '--source', {str(corpus)!r}, '--out', "
            f"{str(tmp_path / 'p.jsonl')!r}]) == 0\n"
            f"assert main(['data', 'stats', '--source', {str(corpus)!r}]) == 0\n"
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets')\n"
            "         if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# ---------------------------------------------------------------- the bad-input table


def _row(conv: str, idx: str, emotion: str, text: str) -> str:
    return f"{conv},{idx},{emotion},a situation,1,{text},5|5|5_2|2|5,"


GOOD_ROWS = [_row("c1", "1", "sad", "I miss him"), _row("c1", "2", "sad", "I am sorry"),
             _row("c2", "1", "joyful", "I won"), _row("c2", "2", "joyful", "Congrats")]
TABLE = "emotion\topposite\tsource\nsad\tjoyful\twheel\njoyful\tsad\twheel\n"

CASES = {
    # name: (train.csv text or None for no file, table text, split, out under a missing dir,
    #        substrings of the message with {src}, {file}, {table}, {out} filled in)
    "missing split file": (None, TABLE, "train", False,
                           ["{src}: missing split file train.csv", "found: test.csv"]),
    "wrong header": ("conv_id,idx,emotion\n" + "\n".join(GOOD_ROWS), TABLE, "train", False,
                     ["{file}:1: wrong header 'conv_id,idx,emotion'"]),
    "non-integer utterance_idx": (
        "\n".join([ED_HEADER, *GOOD_ROWS[:2], _row("c2", "one", "joyful", "I won")]),
        TABLE, "train", False, ["{file}:4: utterance_idx 'one' is not an integer"]),
    "empty file": ("", TABLE, "train", False, ["{file}: empty file"]),
    "label missing from the table": (
        "\n".join([ED_HEADER, *GOOD_ROWS, _row("c3", "1", "bored", "x"), _row("c3", "2", "bored",
                                                                             "y")]),
        TABLE, "train", False,
        ["{table}: emotion table does not fit split 'train' of {file}",
         "label 'bored' (1 dialogues, e.g. conv_id c3) is missing from the table"]),
    "duplicate label in a table": ("\n".join([ED_HEADER, *GOOD_ROWS]),
                                   TABLE + "sad\tjoyful\tproposed\n", "train", False,
                                   ["{table}:4: duplicate label 'sad' (first at line 2)"]),
    "output path in a missing directory": ("\n".join([ED_HEADER, *GOOD_ROWS]), TABLE, "train",
                                           True, ["{out}: output directory", "does not exist"]),
}


@pytest.mark.parametrize("case, command", [
    (case, command) for case in CASES for command in ("preference", "sft", "eval")
    if command == "preference" or "table" not in case])  # only preference reads a table
def test_bad_input_exits_2_names_file_line_value_and_writes_nothing(tmp_path, capsys, case,
                                                                    command):
    csv_text, table_text, split, missing_dir, expected = CASES[case]
    src = tmp_path / "ed"
    src.mkdir()
    (src / "test.csv").write_text("\n".join([ED_HEADER, *GOOD_ROWS]) + "\n")
    if csv_text is not None:
        (src / "train.csv").write_text(csv_text + ("\n" if csv_text else ""))
        if command == "eval":
            (src / "test.csv").write_text(csv_text + ("\n" if csv_text else ""))
    table = tmp_path / "table.tsv"
    table.write_text(table_text)
    out_dir = tmp_path / ("missing" if missing_dir else "out")
    if not missing_dir:
        out_dir.mkdir()
    out = out_dir / "data.jsonl"
    if command == "eval":
        split = "test" if csv_text is not None else "train"
    argv = ["data", command, "--source", str(src), "--split", split, "--out", str(out)]
    if command == "preference":
        argv += ["--table", str(table), "--epochs", "2", "--seed", "0"]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("empo: error: ")
    for piece in expected:
        assert piece.format(src=src, file=src / f"{split}.csv", table=table, out=out) in err
    assert not out.exists()
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_stats_reports_bad_input_the_same_way(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("")
    code, _, err = run(capsys, "data", "stats", "--source", str(tmp_path), "--splits", "train")
    assert code == 2 and f"{tmp_path}/train.csv: empty file" in err
