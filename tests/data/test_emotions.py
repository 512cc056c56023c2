"""Emotion tables: the shipped paper Table 2 and the validation of user tables."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from empo.data.emotions import default_table_path, load_table
from empo.data.synthetic import EMOTIONS
from empo.errors import DataError

PAPER_PAIRS = {  # a sample of paper Table 2, one per source
    "afraid": ("angry", "wheel"), "content": ("anxious", "wheel"),
    "prepared": ("anxious", "dyads"), "hopeful": ("nostalgic", "dyads"),
    "sentimental": ("apprehensive", "proposed"), "devastated": ("excited", "proposed"),
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "table.tsv"
    path.write_text(text)
    return path


def test_default_table_is_paper_table_2():
    path = default_table_path()
    assert path.is_file() and path.name == "plutchik.tsv"
    assert path.read_text().splitlines()[0] == "emotion\topposite\tsource"
    table = load_table(path)
    assert set(table.labels()) == set(EMOTIONS) and len(table) == 32
    for emotion, (opposite, source) in PAPER_PAIRS.items():
        assert (table.opposite(emotion), table.pairs[emotion].source) == (opposite, source)
    assert Counter(p.source for p in table.pairs.values()) == {"wheel": 11, "dyads": 7,
                                                               "proposed": 14}
    assert all(table.opposite(e) in table for e in table.labels())


def test_default_table_matches_the_paper_text(shared_dir):
    text = (shared_dir / "seed" / "empo-paper.txt").read_text()
    block = text[text.index("Emotion label\tOpposite label\tSource"):].splitlines()[1:]
    rows = [line.split("\t") for line in block if re.match(r"^[a-z]+\t[a-z]+\t", line)]
    assert len(rows) == 32
    table = load_table(default_table_path())
    for emotion, opposite, source in rows:
        assert table.opposite(emotion) == opposite
        assert table.pairs[emotion].source == (source.strip() or "proposed")


def test_two_column_tables_comments_and_blank_lines(tmp_path):
    table = load_table(write(tmp_path, "# mine\nemotion\topposite\n\nhappy\tsad\nsad\thappy\n"))
    assert table.opposite("happy") == "sad" and table.pairs["sad"].line == 5


def test_duplicate_label_names_both_lines(tmp_path):
    path = write(tmp_path, "emotion\topposite\tsource\nhappy\tsad\twheel\nsad\thappy\t\n"
                           "happy\tangry\tproposed\n")
    with pytest.raises(DataError, match=rf"{path}:4: duplicate label 'happy' \(first at line 2\)"):
        load_table(path)


def test_every_row_error_is_reported_at_once(tmp_path):
    path = write(tmp_path, "emotion\topposite\nhappy\thappy\nsad\tx\ty\tz\n")
    with pytest.raises(DataError) as err:
        load_table(path)
    assert f"{path}:2: label 'happy' is its own opposite" in str(err.value)
    assert f"{path}:3: expected 2 tab-separated fields" in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("", "empty emotion table"),
    ("emotion,opposite,source\nhappy,sad,wheel\n", ":1: wrong header 'emotion,opposite,source'"),
    ("emotion\topposite\tsource\n", "has a header but no labels"),
])
def test_bad_tables(tmp_path, text, message):
    with pytest.raises(DataError, match=re.escape(message)):
        load_table(write(tmp_path, text))


def test_missing_table_file(tmp_path):
    with pytest.raises(DataError, match="emotion table not found"):
        load_table(tmp_path / "none.tsv")


def test_validation_lists_every_problem_in_one_error(tmp_path):
    path = write(tmp_path, "emotion\topposite\nhappy\tsad\nangry\tcalm\nbored\t\n")
    table = load_table(path)
    counts = {"happy": 3, "angry": 2, "bored": 1, "weird": 4}
    assert len(table.problems(counts)) == 4
    with pytest.raises(DataError) as err:
        table.validate(counts, "split 'train'", {"weird": "hit:9_conv:1"})
    message = str(err.value)
    assert message.startswith(f"{path}: emotion table does not fit split 'train' (4 problem(s))")
    assert "label 'weird' (4 dialogues, e.g. conv_id hit:9_conv:1) is missing from the table" \
        in message
    assert "label 'bored' (1 dialogues) has no opposite (line 4)" in message
    assert "opposite 'sad' of 'happy' (line 2) has no eligible dialogue" in message
    assert "opposite 'calm' of 'angry' (line 3) has no eligible dialogue" in message


def test_table_fits_when_every_label_and_opposite_is_present(tmp_path):
    table = load_table(write(tmp_path, "emotion\topposite\nhappy\tsad\nsad\thappy\nunused\tx\n"))
    assert table.problems({"happy": 1, "sad": 1}) == []
    table.validate({"happy": 1, "sad": 1})
    with pytest.raises(DataError, match="has no opposite"):
        load_table(write(tmp_path, "emotion\topposite\nhappy\t\n")).opposite("happy")
