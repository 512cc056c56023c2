"""Chat formatting of dialogues (DESIGN §3): target = last listener turn, prompt, seeker, examples.

Turn i is the speaker ("user") when i is even and the listener ("assistant") when odd. The target
of a dialogue is its last listener turn: the last turn if the number of turns is even, the second
to last if odd (≥3); dialogues with fewer than 2 turns have no target and are dropped.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from empo.data.ed import Dialogue

Message = dict[str, str]


def role(turn_index: int) -> str:
    """ED turn i -> chat role: the speaker is the user, the listener the assistant."""
    return "user" if turn_index % 2 == 0 else "assistant"


def has_target(d: Dialogue) -> bool:
    """A dialogue is eligible when it has a listener turn, i.e. at least 2 turns."""
    return len(d.turns) >= 2


def eligible(dialogues: Iterable[Dialogue]) -> list[Dialogue]:
    """The dialogues that have a target, in their original order."""
    return [d for d in dialogues if len(d.turns) >= 2]


def target_index(d: Dialogue) -> int:
    """Index of the last listener turn; ValueError for dialogues with fewer than 2 turns."""
    n = len(d.turns)
    if n < 2:
        raise ValueError(f"dialogue {d.conv_id} has {n} turn(s): no listener turn to target")
    return n - 1 if n % 2 == 0 else n - 2


def messages(turns: list[str], system_prompt: str | None = None) -> list[Message]:
    """Turns as alternating user/assistant messages, after an optional system message."""
    out: list[Message] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    out.extend({"role": "user" if i % 2 == 0 else "assistant", "content": text}
               for i, text in enumerate(turns))
    return out


def prompt_messages(d: Dialogue, system_prompt: str | None = None) -> list[Message]:
    """Every turn before the target (the generation/preference prompt)."""
    return messages(d.turns[:target_index(d)], system_prompt)


def target(d: Dialogue) -> str:
    """The text of the last listener turn (the reference / chosen completion)."""
    return d.turns[target_index(d)]


def seeker(d: Dialogue) -> str:
    """The user turn right before the target (what EPITOME scores the response against)."""
    return d.turns[target_index(d) - 1]


def sft_example(d: Dialogue, system_prompt: str | None = None) -> dict[str, Any]:
    """The whole dialogue as messages; training puts loss on assistant (listener) turns only."""
    target_index(d)  # reject dialogues without a listener turn
    return {"conv_id": d.conv_id, "emotion": d.emotion,
            "messages": messages(d.turns, system_prompt)}


def message_row(d: Dialogue, system_prompt: str | None = None) -> dict[str, Any]:
    """The dialogue in the Hub mirror's message form (conv_id, situation, emotion, conversations),
    which `empo.data.ed` reads back to the same dialogue."""
    return {"conv_id": d.conv_id, "situation": d.situation, "emotion": d.emotion,
            "conversations": messages(d.turns, system_prompt)}


def eval_example(d: Dialogue, system_prompt: str | None = None) -> dict[str, Any]:
    """Prompt (turns before the target), seeker turn and reference (the target) of a dialogue."""
    t = target_index(d)
    return {"conv_id": d.conv_id, "emotion": d.emotion,
            "prompt": messages(d.turns[:t], system_prompt),
            "seeker": d.turns[t - 1], "reference": d.turns[t]}
