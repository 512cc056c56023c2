"""The one way a value enters generated shell text (sbatch setup and command lines, container
commands, job wrappers, submit-all.sh): `shell_word` quotes it as one word; text holding a control
or bidi-override character is refused, since no quoting makes it safe to show or to log."""
from __future__ import annotations

import shlex
import unicodedata
from collections.abc import Iterable

from empo.errors import EmpoError

# Bidirectional overrides and isolates: they make text read differently from what runs.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def unsafe_char(text: str, allowed: str = "") -> tuple[int, str] | None:
    """(position, character) of the first control, line/paragraph separator or bidi control in
    `text` that is not in `allowed`; None when there is none."""
    for i, char in enumerate(text):
        if char in allowed:
            continue
        if char in BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return i, char
    return None


def check_printable(text: str, what: str) -> str:
    """`text`, or EmpoError naming `what` and the offending character."""
    found = unsafe_char(str(text))
    if found is not None:
        raise EmpoError(f"{what}: control character {found[1]!r} at position {found[0]} of "
                        f"{str(text)[:40]!r}; only printable text is allowed")
    return str(text)


def shell_word(value: object, what: str = "value") -> str:
    """`value` as exactly one POSIX shell word (shlex.quote), after refusing control characters."""
    return shlex.quote(check_printable(str(value), what))


def shell_words(values: Iterable[object], what: str = "value") -> str:
    """Each of `values` quoted as one word, joined by spaces."""
    return " ".join(shell_word(value, what) for value in values)


def export_line(env: dict[str, object]) -> str:
    """`export K1='v1' K2='v2'`: names must be shell identifiers, values are quoted."""
    for name in env:
        if not (name.isidentifier() and name.isascii()):
            raise EmpoError(f"environment variable name {name!r} is not a shell identifier")
    return "export " + " ".join(f"{k}={shell_word(v, k)}" for k, v in env.items())
