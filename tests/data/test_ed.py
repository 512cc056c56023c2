"""EmpatheticDialogues loading (DESIGN §3): the raw layout's tolerant parser, the message form."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from empo.data.columns import Columns
from empo.data.ed import Dialogue, load_dialogues, resolve_source
from empo.data.synthetic import EMOTIONS, synthetic_dialogues, write_ed_corpus, write_hub_mirror
from empo.errors import DataError


# ---------------------------------------------------------------- raw layout: cleaning rules


def test_commas_are_unescaped_in_turns_and_situation(write_split, ed_row):
    src = write_split([ed_row("hit:1_conv:1", 1, "Hi_comma_ there"),
                       ed_row("hit:1_conv:1", 2, "Oh_comma_ no_comma_ why?")])
    (d,) = load_dialogues(str(src), "train").dialogues
    assert d.turns == ["Hi, there", "Oh, no, why?"]
    assert d.situation == "I lost my keys, again"
    assert d.emotion == "sad"


def test_rows_are_grouped_by_conv_id_and_ordered_by_utterance_idx(write_split, ed_row):
    src = write_split([ed_row("hit:2_conv:4", 2, "b2", "joyful"),
                       ed_row("hit:1_conv:2", 3, "a3"),
                       ed_row("hit:2_conv:4", 1, "b1", "joyful"),
                       ed_row("hit:1_conv:2", 1, "a1"),
                       ed_row("hit:1_conv:2", 2, "a2")])
    result = load_dialogues(str(src), "train")
    assert [(d.conv_id, d.emotion, d.turns) for d in result.dialogues] == [
        ("hit:2_conv:4", "joyful", ["b1", "b2"]),  # order of first appearance
        ("hit:1_conv:2", "sad", ["a1", "a2", "a3"]),
    ]
    assert result.utterances == 5 and result.malformed == 0


def test_utterance_idx_orders_numerically_not_as_text(write_split, ed_row):
    lines = [ed_row("c", i, f"t{i}") for i in (10, 2, 1, 9, 3, 4, 5, 6, 7, 8, 11, 12)]
    (d,) = load_dialogues(str(write_split(lines)), "train").dialogues
    assert d.turns == [f"t{i}" for i in range(1, 13)]


def test_rows_with_wrong_field_count_are_dropped_and_counted(write_split, ed_row):
    src = write_split([ed_row("c", 1, "hello"),
                       ed_row("c", 2, "an unescaped, comma"),   # 9 fields
                       "c,3,sad,situation,1,too few",              # 6 fields
                       ed_row("c", 2, "fine")])
    result = load_dialogues(str(src), "train")
    assert result.malformed == 2
    assert result.dialogues[0].turns == ["hello", "fine"]


def test_rows_whose_text_contains_hit_are_dropped_and_counted(write_split, ed_row):
    src = write_split([ed_row("hit:7_conv:14", 1, "hello"),
                       ed_row("hit:7_conv:14", 2, "sure hit:8_conv:16 thing"),
                       ed_row("hit:7_conv:14", 2, "the real reply"),
                       ed_row("hit:7_conv:14", 3, "ok", situation="glued hit:9_conv:18")])
    result = load_dialogues(str(src), "train")
    assert result.malformed == 2
    assert result.dialogues[0].turns == ["hello", "the real reply"]


def test_a_gap_in_utterance_idx_ends_the_dialogue_there(write_split, ed_row):
    src = write_split([ed_row("c", 1, "u1"), ed_row("c", 2, "l1"), ed_row("c", 4, "l2"),
                       ed_row("c", 5, "u3")])
    result = load_dialogues(str(src), "train")
    assert result.dialogues[0].turns == ["u1", "l1"]  # roles after the gap would be wrong
    assert result.dropped_turns == 2 and result.utterances == 2


def test_a_repeated_utterance_idx_keeps_the_first_row(write_split, ed_row):
    src = write_split([ed_row("c", 1, "u1"), ed_row("c", 2, "first"), ed_row("c", 2, "again"),
                       ed_row("c", 3, "u2")])
    result = load_dialogues(str(src), "train")
    assert result.dialogues[0].turns == ["u1", "first"]
    assert result.dropped_turns == 2


def test_a_dialogue_whose_first_row_was_malformed_has_no_turns(write_split, ed_row):
    src = write_split([ed_row("c", 1, "bad, row"), ed_row("c", 2, "l1"), ed_row("d", 1, "x")])
    result = load_dialogues(str(src), "train")
    assert [(d.conv_id, d.turns) for d in result.dialogues] == [("c", []), ("d", ["x"])]
    assert result.malformed == 1 and result.dropped_turns == 1


def test_crlf_line_endings_and_blank_lines(write_split, ed_row):
    src = write_split([ed_row("c", 1, "u1"), "", ed_row("c", 2, "l1")], newline="\r\n")
    result = load_dialogues(str(src), "train")
    assert result.dialogues[0].turns == ["u1", "l1"] and result.malformed == 0


def test_header_only_file_is_an_empty_split(write_split):
    result = load_dialogues(str(write_split([])), "train")
    assert result.dialogues == [] and result.utterances == 0


# ---------------------------------------------------------------- raw layout: bad input


def test_missing_split_file_names_the_directory_and_the_file(write_split, ed_row):
    src = write_split([ed_row("c", 1, "x")], split="train")
    with pytest.raises(DataError, match=r"missing split file valid\.csv.*found: train\.csv") as err:
        load_dialogues(str(src), "valid")
    assert str(src) in str(err.value)


def test_wrong_header_names_file_line_and_value(write_split):
    src = write_split(["a,b"], header="conv_id,utterance_idx,emotion")
    with pytest.raises(DataError) as err:
        load_dialogues(str(src), "train")
    assert f"{src / 'train.csv'}:1: wrong header 'conv_id,utterance_idx,emotion'" in str(err.value)


def test_non_integer_utterance_idx_names_file_line_and_value(write_split, ed_row):
    src = write_split([ed_row("c", 1, "x"), ed_row("c", 2, "bad, row"), "",
                       ed_row("c", "two", "y")])
    with pytest.raises(DataError) as err:
        load_dialogues(str(src), "train")
    assert f"{src / 'train.csv'}:5: utterance_idx 'two' is not an integer" in str(err.value)


def test_malformed_rows_with_odd_indices_are_dropped_not_errors(write_split, ed_row):
    src = write_split([ed_row("c", 1, "x"), ed_row("c", "zz", "text hit:3_conv:4"),
                       "c,yy,too,few"])
    assert load_dialogues(str(src), "train").malformed == 2


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error_naming_it(write_split, content):
    src = write_split([], header=None)
    (src / "train.csv").write_text(content)
    with pytest.raises(DataError, match=r"train\.csv: empty file"):
        load_dialogues(str(src), "train")


def test_nonexistent_path_source_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        load_dialogues(str(tmp_path / "nowhere"), "train")


@pytest.mark.parametrize("source", ["Estwld/empathetic_dialogues_llm", "empathetic_dialogues"])
def test_a_source_that_is_no_path_is_a_hub_id(source):
    assert resolve_source(source, "train") == ("hub", source)


@pytest.mark.parametrize("source", ["./ed", "data/ed/raw", "~/ed", "x.jsonl"])
def test_a_missing_source_that_looks_like_a_path_is_an_error(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"source {source}: no such file or directory"):
        resolve_source(source, "train")


# ---------------------------------------------------------------- the synthetic corpus


def test_synthetic_corpus_has_what_tests_and_tiny_runs_need(tmp_path):
    summary = write_ed_corpus(tmp_path, {"train": 5, "valid": 2, "test": 2}, seed=3)
    for split, n in {"train": 5, "valid": 2, "test": 2}.items():
        result = load_dialogues(str(tmp_path), split)
        lengths = {len(d.turns) for d in result.dialogues}
        assert {d.emotion for d in result.dialogues} == set(EMOTIONS) and len(EMOTIONS) == 32
        assert len(result.dialogues) == 32 * n == summary[split]["dialogues"]
        assert result.utterances == summary[split]["utterances"]
        assert result.malformed == summary[split]["malformed"] > 0
        assert result.dropped_turns == 0
        assert lengths <= {2, 3, 4, 5, 6}
        assert any(k % 2 for k in lengths) and any(k % 2 == 0 for k in lengths)
    raw = (tmp_path / "train.csv").read_text()
    assert "_comma_" in raw and "," in load_dialogues(str(tmp_path), "train").dialogues[0].turns[0]


def test_synthetic_corpus_is_deterministic(tmp_path):
    write_ed_corpus(tmp_path / "a", {"train": 3}, seed=1)
    write_ed_corpus(tmp_path / "b", {"train": 3}, seed=1)
    write_ed_corpus(tmp_path / "c", {"train": 3}, seed=2)
    a, b, c = ((tmp_path / x / "train.csv").read_bytes() for x in "abc")
    assert a == b and a != c


def test_synthetic_corpus_at_ed_scale_is_fast(tmp_path):
    import time

    start = time.perf_counter()
    summary = write_ed_corpus(tmp_path, {"train": 610}, seed=0)
    assert time.perf_counter() - start < 10
    assert 19_000 <= summary["train"]["dialogues"] <= 20_000
    assert 80_000 <= summary["train"]["utterances"] <= 90_000


def test_columns_and_dialogues_hold_the_same_data(corpus):
    result = load_dialogues(str(corpus), "train")
    dialogues = result.dialogues
    assert Columns.from_dialogues(dialogues).dialogues() == dialogues
    assert result.columns.dialogues() == dialogues


# ---------------------------------------------------------------- message form (Hub mirror)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_message_form_gives_the_same_dialogues_as_the_raw_layout(tmp_path, fmt):
    sizes = {"train": 2, "test": 1}
    write_ed_corpus(tmp_path / "raw", sizes, seed=5)
    write_hub_mirror(tmp_path / "hub", sizes, seed=5, fmt=fmt)
    for split in sizes:
        raw = load_dialogues(str(tmp_path / "raw"), split)
        hub = load_dialogues(str(tmp_path / "hub"), split)
        assert hub.dialogues == raw.dialogues
        assert hub.utterances == raw.utterances and hub.malformed == 0


def test_message_form_hub_snapshot_layout(tmp_path):
    """A downloaded Hub snapshot: data/<split>-00000-of-00001.parquet."""
    (path,) = write_hub_mirror(tmp_path / "snap" / "data", {"valid": 1}, seed=2, fmt="parquet")
    path.rename(path.with_name("valid-00000-of-00001.parquet"))
    result = load_dialogues(str(tmp_path / "snap"), "validation")
    assert result.dialogues == synthetic_dialogues("valid", 1, seed=2)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _msg(conv_id: str, roles: list[str], emotion: str = "sad") -> dict:
    return {"conv_id": conv_id, "situation": "s", "emotion": emotion,
            "conversations": [{"role": r, "content": f"{r} {i}"} for i, r in enumerate(roles)]}


def test_message_form_single_file_and_validation_alias(tmp_path):
    _write_jsonl(tmp_path / "validation.jsonl", [_msg("a", ["user", "assistant"])])
    result = load_dialogues(str(tmp_path), "valid")
    assert result.dialogues == [Dialogue("a", "sad", "s", ["user 0", "assistant 1"])]
    single = load_dialogues(str(tmp_path / "validation.jsonl"), "test")
    assert single.dialogues == result.dialogues


def test_message_form_skips_system_and_truncates_broken_role_order(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", [
        _msg("a", ["system", "user", "assistant", "assistant", "user"]),
        _msg("b", ["assistant", "user"]),
    ])
    result = load_dialogues(str(path), "train")
    assert [(d.conv_id, d.turns) for d in result.dialogues] == [
        ("a", ["user 1", "assistant 2"]), ("b", [])]
    assert result.dropped_turns == 4


def test_message_form_missing_columns_is_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", [{"conv_id": "a", "dialog": []}])
    with pytest.raises(DataError, match=r"lacks column\(s\) situation, emotion, conversations"):
        load_dialogues(str(path), "train")


def test_unreachable_hub_dataset_is_a_data_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="cannot load Hub dataset 'empo-test/no-such-dataset'"):
        load_dialogues("empo-test/no-such-dataset", "train")


def test_synthetic_dialogues_follow_the_emotion():
    dialogues = synthetic_dialogues("train", 2, seed=0)
    assert {d.emotion for d in dialogues} == set(EMOTIONS)
    assert all(2 <= len(d.turns) <= 6 and d.situation.startswith("I ") for d in dialogues)
    assert len({d.conv_id for d in dialogues}) == len(dialogues)
