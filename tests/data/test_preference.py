"""Theory-driven preference pairs (DESIGN §3): opposite emotions, once per epoch, balance, seeds."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from empo.data.chat import eligible, prompt_messages, target
from empo.data.ed import Dialogue, load_dialogues
from empo.data.emotions import EmotionPair, EmotionTable, default_table_path, load_table
from empo.data.preference import (ROW_FIELDS, epoch_seed, preference_pairs, rejected_indices,
                                  write_preference_jsonl)
from empo.errors import DataError

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def make_table(opposites: dict[str, str]) -> EmotionTable:
    return EmotionTable("test.tsv", [EmotionPair(e, o, "", i + 2)
                                     for i, (e, o) in enumerate(opposites.items())])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[EmotionTable, list[Dialogue]]:
    """A random table over 2-6 labels and dialogues of every label (some with 1 turn)."""
    labels = draw(st.lists(st.sampled_from("abcdefgh"), min_size=2, max_size=6, unique=True))
    opposites = {label: draw(st.sampled_from([o for o in labels if o != label]))
                 for label in labels}
    dialogues = []
    for label in labels:
        for j in range(draw(st.integers(1, 7))):
            k = draw(st.integers(2 if j == 0 else 1, 6))
            turns = draw(st.lists(st.text(max_size=6), min_size=k, max_size=k))
            dialogues.append(Dialogue(f"{label}{j}", label, "situation", turns))
    order = draw(st.permutations(range(len(dialogues))))
    return make_table(opposites), [dialogues[i] for i in order]


def by_epoch(rows: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        out[row["epoch"]].append(row)
    return out


@SETTINGS
@given(scenarios(), st.integers(1, 4), st.integers(0, 2**32), st.sampled_from(["balanced",
                                                                               "uniform"]))
def test_every_epoch_holds_every_eligible_dialogue_exactly_once(scenario, epochs, seed, sampling):
    table, dialogues = scenario
    rows = preference_pairs(dialogues, table, epochs, seed, sampling)
    usable = [d.conv_id for d in eligible(dialogues)]
    assert sorted(by_epoch(rows)) == list(range(epochs))
    for epoch_rows in by_epoch(rows).values():
        assert [r["conv_id"] for r in epoch_rows] == usable
    assert all(list(r) == list(ROW_FIELDS) for r in rows)


@SETTINGS
@given(scenarios(), st.integers(0, 2**32), st.sampled_from(["balanced", "uniform"]),
       st.one_of(st.none(), st.text(max_size=5)))
def test_rejected_is_the_target_of_a_dialogue_with_the_opposite_emotion(scenario, seed, sampling,
                                                                        system):
    table, dialogues = scenario
    by_id = {d.conv_id: d for d in dialogues}
    for row in preference_pairs(dialogues, table, 2, seed, sampling, system):
        d, other = by_id[row["conv_id"]], by_id[row["rejected_conv_id"]]
        assert row["emotion"] == d.emotion
        assert row["rejected_emotion"] == other.emotion == table.opposite(d.emotion)
        assert row["rejected_conv_id"] != row["conv_id"]
        assert len(other.turns) >= 2
        assert row["prompt"] == prompt_messages(d, system)
        assert row["chosen"] == [{"role": "assistant", "content": target(d)}]
        assert row["rejected"] == [{"role": "assistant", "content": target(other)}]


@SETTINGS
@given(scenarios(), st.integers(1, 3), st.integers(0, 2**32))
def test_balanced_uses_each_candidate_at_most_ceil_n_over_m_times(scenario, epochs, seed):
    table, dialogues = scenario
    usable = eligible(dialogues)
    group = Counter(d.emotion for d in usable)
    asking = Counter(table.opposite(d.emotion) for d in usable)
    for epoch_rows in by_epoch(preference_pairs(dialogues, table, epochs, seed)).values():
        used = Counter(r["rejected_conv_id"] for r in epoch_rows)
        for conv_id, times in used.items():
            label = conv_id[0]
            assert times <= math.ceil(asking[label] / group[label])
            assert times >= asking[label] // group[label]


@SETTINGS
@given(scenarios(), st.integers(0, 2**32), st.sampled_from(["balanced", "uniform"]),
       st.one_of(st.none(), st.text(max_size=5)))
def test_same_seed_gives_the_same_rows_and_file_bytes(tmp_path, scenario, seed, sampling, system):
    table, dialogues = scenario
    rows = preference_pairs(dialogues, table, 2, seed, sampling, system)
    assert preference_pairs(dialogues, table, 2, seed, sampling, system) == rows
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert write_preference_jsonl(a, dialogues, table, 2, seed, sampling, system) == len(rows)
    write_preference_jsonl(b, dialogues, table, 2, seed, sampling, system)
    expected = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    assert a.read_bytes() == b.read_bytes() == expected


def test_balanced_uses_every_candidate_equally_when_n_is_a_multiple_of_m():
    table = make_table({"a": "b", "b": "a"})
    dialogues = ([Dialogue(f"a{i}", "a", "", ["u", f"a{i}"]) for i in range(6)]
                 + [Dialogue(f"b{i}", "b", "", ["u", f"b{i}"]) for i in range(3)])
    for epoch_rows in by_epoch(preference_pairs(dialogues, table, 4, seed=7)).values():
        used = Counter(r["rejected_conv_id"] for r in epoch_rows if r["emotion"] == "a")
        assert used == {"b0": 2, "b1": 2, "b2": 2}
        used = Counter(r["rejected_conv_id"] for r in epoch_rows if r["emotion"] == "b")
        assert len(used) == 3 and set(used.values()) == {1}


def test_labels_sharing_an_opposite_draw_from_one_balanced_pool():
    table = make_table({"grateful": "disgusted", "trusting": "disgusted",
                        "disgusted": "trusting"})
    dialogues = ([Dialogue(f"g{i}", "grateful", "", ["u", "r"]) for i in range(3)]
                 + [Dialogue(f"t{i}", "trusting", "", ["u", "r"]) for i in range(3)]
                 + [Dialogue(f"d{i}", "disgusted", "", ["u", "r"]) for i in range(2)])
    rows = preference_pairs(dialogues, table, 1, seed=0)
    used = Counter(r["rejected_conv_id"] for r in rows if r["rejected_emotion"] == "disgusted")
    assert used == {"d0": 3, "d1": 3}  # n = 6 requesters, m = 2 -> exactly 3 each


@pytest.fixture(scope="module")
def train(corpus: Path) -> list[Dialogue]:
    return load_dialogues(str(corpus), "train").dialogues


def test_each_epoch_and_each_seed_draws_afresh(train):
    table = load_table(default_table_path())
    draws = rejected_indices([d.emotion for d in train], [d.conv_id for d in train], table, 3, 0)
    other = rejected_indices([d.emotion for d in train], [d.conv_id for d in train], table, 1, 1)
    assert (draws[0] != draws[1]).mean() > 0.5 and (draws[1] != draws[2]).mean() > 0.5
    assert (draws[0] != other[0]).mean() > 0.5


def test_uniform_draws_with_replacement(train):
    table = load_table(default_table_path())
    rows = preference_pairs(train, table, 3, seed=0, sampling="uniform")
    group = Counter(d.emotion for d in train)
    asking = Counter(table.opposite(d.emotion) for d in train)
    over = [(e, c) for e, rows_ in by_epoch(rows).items()
            for c, k in Counter(r["rejected_conv_id"] for r in rows_).items()
            if k > math.ceil(asking[train_label(train, c)] / group[train_label(train, c)])]
    assert over, "uniform sampling never exceeded the balanced cap: not with replacement?"


def train_label(train: list[Dialogue], conv_id: str) -> str:
    return next(d.emotion for d in train if d.conv_id == conv_id)


def test_draws_are_pinned_for_a_fixed_input():
    """The random stream is part of the reproduction: a change here changes every run's data."""
    table = make_table({"a": "b", "b": "a"})
    dialogues = [Dialogue(f"{x}{i}", x, "", ["u", "r"]) for x in "ab" for i in range(4)]
    assert epoch_seed(42, 0) == 5976159626496050077 != epoch_seed(42, 1)
    balanced = preference_pairs(dialogues, table, 2, seed=42)
    assert [r["rejected_conv_id"] for r in balanced] == [
        "b3", "b2", "b0", "b1", "a0", "a1", "a2", "a3",
        "b3", "b2", "b1", "b0", "a1", "a0", "a2", "a3"]
    uniform = preference_pairs(dialogues, table, 2, seed=42, sampling="uniform")
    assert [r["rejected_conv_id"] for r in uniform] == [
        "b1", "b3", "b1", "b1", "a1", "a2", "a3", "a3",
        "b3", "b2", "b1", "b0", "a1", "a0", "a1", "a2"]


def test_output_does_not_depend_on_python_hash_seed(corpus, tmp_path):
    outputs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"pref-{hash_seed}.jsonl"
        code = ("import sys; from empo.cli import main; sys.exit(main(['data', 'preference', "
                f"'--source', {str(corpus)!r}, '--epochs', '2', '--seed', '3', '--out', "
                f"{str(out)!r}]))")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       env={**os.environ, "PYTHONHASHSEED": hash_seed})
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] and outputs[0]


def test_dialogues_without_a_listener_turn_are_left_out():
    table = make_table({"a": "b", "b": "a"})
    dialogues = [Dialogue("a0", "a", "", ["u", "r"]), Dialogue("a1", "a", "", ["u"]),
                 Dialogue("b0", "b", "", ["u", "r", "u2"])]
    rows = preference_pairs(dialogues, table, 1, seed=0)
    assert [r["conv_id"] for r in rows] == ["a0", "b0"]


def test_label_missing_from_table_and_opposite_without_dialogues_in_one_error():
    table = make_table({"a": "b", "b": "a", "c": "d"})
    dialogues = [Dialogue("a0", "a", "", ["u", "r"]), Dialogue("b0", "b", "", ["u"]),
                 Dialogue("c0", "c", "", ["u", "r"]), Dialogue("x0", "x", "", ["u", "r"])]
    with pytest.raises(DataError) as err:
        preference_pairs(dialogues, table, 1, seed=0, where="split 'train' of ed/")
    message = str(err.value)
    assert "test.tsv: emotion table does not fit split 'train' of ed/ (3 problem(s))" in message
    assert "opposite 'b' of 'a' (line 2) has no eligible dialogue" in message
    assert "opposite 'd' of 'c' (line 4) has no eligible dialogue" in message
    assert "label 'x' (1 dialogues, e.g. conv_id x0) is missing from the table" in message


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs: 0 is out of range; allowed: 1 <= epochs <= 1000"),
        ({"epochs": 100_000_000}, "epochs: 100000000 is out of range"),
    ({"sampling": "stratified"}, "sampling: 'stratified' is not one of balanced, uniform"),
])
def test_bad_arguments(kwargs, message):
    table = make_table({"a": "b", "b": "a"})
    dialogues = [Dialogue("a0", "a", "", ["u", "r"]), Dialogue("b0", "b", "", ["u", "r"])]
    args = {"epochs": 1, "seed": 0, "sampling": "balanced", **kwargs}
    with pytest.raises(DataError, match=message):
        preference_pairs(dialogues, table, **args)


def test_no_eligible_dialogue_is_an_error():
    with pytest.raises(DataError, match="no eligible dialogue"):
        preference_pairs([Dialogue("a0", "a", "", ["u"])], make_table({"a": "b"}), 1, 0)


def test_writer_leaves_no_file_when_the_table_does_not_fit(tmp_path):
    out = tmp_path / "pref.jsonl"
    with pytest.raises(DataError):
        write_preference_jsonl(out, [Dialogue("x0", "x", "", ["u", "r"])],
                               make_table({"a": "b"}), 1, 0)
    assert list(tmp_path.iterdir()) == []
