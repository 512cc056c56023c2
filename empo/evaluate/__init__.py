"""Evaluation: response generation, diff-EPITOME, BERTScore and MMLU (DESIGN §4).

Heavy libraries are imported by the submodules only; this module holds the JSONL reader they share.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from empo.errors import EvalError

PREDICTION_FIELDS = ("conv_id", "emotion", "seeker", "prompt", "reference", "prediction")


def read_jsonl(path: Path, required: Sequence[str], what: str = "input") -> list[dict[str, Any]]:
    """JSON objects, one a line, each with the `required` fields; errors name file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EvalError(f"{path}: {what} file does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise EvalError(f"{path}: cannot read {what} ({err})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvalError(f"{path}:{number}: invalid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise EvalError(f"{path}:{number}: expected a JSON object")
        missing = [f for f in required if f not in row]
        if missing:
            raise EvalError(f"{path}:{number}: missing field(s) {', '.join(missing)}")
        wrong = [f for f in required if f not in ("prompt", "conv_id")
                 and not isinstance(row[f], str)]
        if wrong:
            raise EvalError(f"{path}:{number}: field(s) {', '.join(wrong)} must be strings")
        rows.append(row)
    if not rows:
        raise EvalError(f"{path}: {what} is empty")
    return rows
