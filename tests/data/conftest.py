"""Fixtures for the data layer: a small synthetic corpus and a writer for hand-made ED files."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from empo.data.dialogue import ED_HEADER
from empo.data.synthetic import write_ed_corpus

SIZES = {"train": 6, "valid": 2, "test": 2}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw-layout corpus: 32 emotions x SIZES dialogues, with malformed rows."""
    out = tmp_path_factory.mktemp("corpus") / "ed"
    write_ed_corpus(out, SIZES, seed=0, malformed=True)
    return out


@pytest.fixture
def write_split(tmp_path: Path) -> Callable[..., Path]:
    """write_split(lines, split="train", header=ED_HEADER) -> the corpus directory."""

    def write(lines: Sequence[str], split: str = "train", header: str | None = ED_HEADER,
              newline: str = "\n") -> Path:
        text = newline.join(([header] if header is not None else []) + list(lines))
        (tmp_path / f"{split}.csv").write_text(text + (newline if text else ""), encoding="utf-8")
        return tmp_path

    return write


def row(conv: str, idx: int | str, text: str, emotion: str = "sad",
        situation: str = "I lost my keys_comma_ again") -> str:
    """One raw ED line (8 fields); `text` is written as given (escape commas yourself)."""
    return f"{conv},{idx},{emotion},{situation},1,{text},5|5|5_2|2|5,"


@pytest.fixture
def ed_row() -> Callable[..., str]:
    return row
