"""Chat formatting (DESIGN §3): the target is the last listener turn; prompt, seeker, examples."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from empo.data.chat import (eligible, eval_example, has_target, messages, prompt_messages, role,
                            seeker, sft_example, target, target_index)
from empo.data.ed import Dialogue


def dialogue(n: int) -> Dialogue:
    return Dialogue("c", "sad", "situation", [f"t{i}" for i in range(n)])


@pytest.mark.parametrize("n, expected", [(2, 1), (3, 1), (4, 3), (5, 3), (6, 5), (7, 5)])
def test_target_is_the_last_turn_if_even_else_the_second_to_last(n, expected):
    assert target_index(dialogue(n)) == expected


@pytest.mark.parametrize("n", [0, 1])
def test_dialogues_with_fewer_than_two_turns_have_no_target(n):
    assert not has_target(dialogue(n))
    with pytest.raises(ValueError, match="no listener turn"):
        target_index(dialogue(n))
    with pytest.raises(ValueError):
        eval_example(dialogue(n))
    with pytest.raises(ValueError):
        sft_example(dialogue(n))


def test_eligible_keeps_order_and_drops_short_dialogues():
    ds = [dialogue(3), dialogue(1), dialogue(2), dialogue(0)]
    assert eligible(ds) == [ds[0], ds[2]]


def test_speaker_is_user_and_listener_is_assistant():
    assert [role(i) for i in range(4)] == ["user", "assistant", "user", "assistant"]


def test_eval_example_of_an_odd_dialogue():
    ex = eval_example(dialogue(5))
    assert ex == {"conv_id": "c", "emotion": "sad",
                  "prompt": [{"role": "user", "content": "t0"},
                             {"role": "assistant", "content": "t1"},
                             {"role": "user", "content": "t2"}],
                  "seeker": "t2", "reference": "t3"}


def test_eval_example_of_an_even_dialogue_with_system_prompt():
    ex = eval_example(dialogue(2), system_prompt="Be kind.")
    assert ex["prompt"] == [{"role": "system", "content": "Be kind."},
                            {"role": "user", "content": "t0"}]
    assert (ex["seeker"], ex["reference"]) == ("t0", "t1")


def test_empty_system_prompt_adds_no_message():
    assert prompt_messages(dialogue(2), "") == [{"role": "user", "content": "t0"}]


def test_sft_example_is_the_whole_dialogue_as_messages():
    ex = sft_example(dialogue(3), system_prompt="S")
    assert ex["conv_id"] == "c" and ex["emotion"] == "sad"
    assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant", "user"]
    assert [m["content"] for m in ex["messages"]] == ["S", "t0", "t1", "t2"]


@given(st.lists(st.text(max_size=5), min_size=2, max_size=12), st.one_of(st.none(), st.text()))
def test_prompt_target_and_seeker_agree_for_any_dialogue(turns, system):
    d = Dialogue("c", "e", "s", turns)
    t = target_index(d)
    assert role(t) == "assistant" and t >= len(turns) - 2  # the last listener turn
    prompt = prompt_messages(d, system)
    body = prompt[1:] if system else prompt
    assert [m["content"] for m in body] == turns[:t]
    assert prompt[-1] == {"role": "user", "content": turns[t - 1]}
    assert (seeker(d), target(d)) == (turns[t - 1], turns[t])
    assert messages(turns, system)[: len(prompt)] == prompt
