"""A synthetic EmpatheticDialogues-like corpus for offline tests, tiny assets and benchmarks.

Dialogues are built from emotion-specific templates (`empo.data.templates`, the 32 ED labels),
2 to 6 turns, the listener's replies fitting the speaker's emotion, so a tiny model has something
to learn. Written
in the raw ED layout (`_comma_`, a few malformed rows) or in the Hub mirror's message form.
Deterministic for a given seed; ED scale (~20k dialogues) takes about a second.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from empo.data.dialogue import ED_HEADER, Dialogue
from empo.data.templates import CLOSINGS, OPENERS, PEOPLE, TIMES
from empo.data.templates import EMOTIONS as TEMPLATES

DEFAULT_PER_EMOTION = {"train": 8, "valid": 2, "test": 2}
_TURN_WEIGHTS = ((2, 0.06), (3, 0.10), (4, 0.46), (5, 0.20), (6, 0.18))  # mean 4.34, like ED
_SPLIT_BASE = {"train": 0, "valid": 1_000_000, "test": 2_000_000}

EMOTIONS = tuple(TEMPLATES)


def _split_seed(seed: int, split: str) -> int:
    return int.from_bytes(hashlib.sha256(f"empo.synthetic:{seed}:{split}".encode()).digest()[:8],
                          "big")


def _pick(rng: random.Random, items: list[str]) -> str:
    return items[int(rng.random() * len(items))]


def _num_turns(rng: random.Random) -> int:
    x = rng.random()
    for turns, weight in _TURN_WEIGHTS:
        x -= weight
        if x < 0:
            return turns
    return _TURN_WEIGHTS[-1][0]


def _fill(rng: random.Random, text: str) -> str:
    while "{person}" in text:
        text = text.replace("{person}", _pick(rng, PEOPLE), 1)
    return text[0].upper() + text[1:]


def _dialogue(rng: random.Random, emotion: str, conv_id: str) -> Dialogue:
    polarity, feels, events, replies, follows, seconds = TEMPLATES[emotion]
    event = _pick(rng, events)
    while "{person}" in event:
        event = event.replace("{person}", _pick(rng, PEOPLE), 1)
    time = _pick(rng, TIMES)
    feel = _pick(rng, feels)
    situation = f"I {event} {time[0].lower()}{time[1:]}."
    close_user, close_listener = CLOSINGS[polarity]
    turns = [_pick(rng, OPENERS).format(time=time, event=event, feel=feel),
             _pick(rng, replies), _fill(rng, _pick(rng, follows)), _fill(rng, _pick(rng, seconds)),
             _pick(rng, close_user), _pick(rng, close_listener)]
    return Dialogue(conv_id, emotion, situation, turns[:_num_turns(rng)])


def synthetic_dialogues(split: str, per_emotion: int, seed: int = 0) -> list[Dialogue]:
    """`per_emotion` dialogues of each of the 32 ED emotions, interleaved, for `split`."""
    rng = random.Random(_split_seed(seed, split))
    base = _SPLIT_BASE.get(split, 3_000_000)
    out = []
    for _ in range(per_emotion):
        order = list(EMOTIONS)
        for i in range(len(order) - 1, 0, -1):
            j = int(rng.random() * (i + 1))
            order[i], order[j] = order[j], order[i]
        for emotion in order:
            hit = base + len(out)
            out.append(_dialogue(rng, emotion, f"hit:{hit}_conv:{2 * hit + 1}"))
    return out


def _escape(text: str) -> str:
    return text.replace(",", "_comma_")


def raw_lines(dialogues: list[Dialogue], seed: int = 0, malformed: bool = True) -> list[str]:
    """Rows of a raw ED split file (header first), with a few malformed rows if asked."""
    rng = random.Random(seed)
    bad_every = max(1, len(dialogues) // (2 + len(dialogues) // 1000)) if malformed else 0
    lines = [ED_HEADER]
    for k, d in enumerate(dialogues):
        speakers = (int(rng.random() * 800), int(rng.random() * 800))
        situation = _escape(d.situation)
        for i, text in enumerate(d.turns):
            selfeval = f"{1 + int(rng.random() * 5)}|{1 + int(rng.random() * 5)}|5_2|2|5"
            lines.append(f"{d.conv_id},{i + 1},{d.emotion},{situation},{speakers[i % 2]},"
                         f"{_escape(text)},{selfeval},")
        if bad_every and k % bad_every == bad_every // 2:
            # ED's defects: a row with an unescaped comma (too many fields), and a row whose
            # text swallowed another row's id; both come after the dialogue's last real turn.
            n = len(d.turns)
            lines.append(f"{d.conv_id},{n + 1},{d.emotion},{situation},{speakers[n % 2]},"
                         f"Well, that is all I wanted to say,5|5|5_2|2|5,")
            lines.append(f"{d.conv_id},{n + 2},{d.emotion},{situation},{speakers[(n + 1) % 2]},"
                         f"I know hit:{k}_conv:{2 * k} right,5|5|5_2|2|5,")
    return lines


def write_ed_corpus(out_dir: str | Path, per_emotion: Mapping[str, int] | None = None,
                    seed: int = 0, malformed: bool = True) -> dict[str, dict[str, int]]:
    """Write `<split>.csv` in the raw ED layout for each split; returns per-split counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for split, n in (per_emotion or DEFAULT_PER_EMOTION).items():
        dialogues = synthetic_dialogues(split, n, seed)
        lines = raw_lines(dialogues, seed=_split_seed(seed, split), malformed=malformed)
        (out / f"{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        utterances = sum(len(d.turns) for d in dialogues)
        summary[split] = {"dialogues": len(dialogues), "utterances": utterances,
                          "malformed": len(lines) - 1 - utterances}
    return summary


def message_rows(dialogues: list[Dialogue]) -> list[dict[str, Any]]:
    """Dialogues in the Hub mirror's schema: conv_id, situation, emotion, conversations."""
    return [{"conv_id": d.conv_id, "situation": d.situation, "emotion": d.emotion,
             "conversations": [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
                               for i, t in enumerate(d.turns)]} for d in dialogues]


def write_hub_mirror(out_dir: str | Path, per_emotion: Mapping[str, int] | None = None,
                     seed: int = 0, fmt: str = "jsonl") -> list[Path]:
    """Write `<split>.jsonl` (or `.parquet`) in message form: the raw corpus' dialogues."""
    if fmt not in ("jsonl", "parquet"):
        raise ValueError(f"fmt must be jsonl or parquet, not {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, n in (per_emotion or DEFAULT_PER_EMOTION).items():
        rows = message_rows(synthetic_dialogues(split, n, seed))
        path = out / f"{split}.{fmt}"
        if fmt == "jsonl":
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                            encoding="utf-8")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), path)
        paths.append(path)
    return paths
