"""Emotion tables: TSV files mapping each emotion label to its opposite (paper Table 2 by default).

Format: a header `emotion<TAB>opposite[<TAB>source]`, then one row per label; `source` says how
the pair was found (wheel, dyads, proposed). Blank lines and lines starting with `#` are ignored.
A row may leave `opposite` empty: the label is known but has no opposite.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from empo.config import package_file
from empo.errors import DataError

TABLE_COLUMNS = ("emotion", "opposite", "source")
DEFAULT_TABLE = "empo:emotions/plutchik.tsv"  # paper Table 2, shipped in the package


def default_table_path() -> Path:
    """The paper's table (Table 2) as installed with the package."""
    return package_file(DEFAULT_TABLE)


@dataclass(frozen=True)
class EmotionPair:
    emotion: str
    opposite: str
    source: str
    line: int


class EmotionTable:
    """Label -> opposite label lookup, with the file and line of every entry for messages."""

    def __init__(self, path: str, pairs: list[EmotionPair]):
        self.path = path
        self.pairs = {p.emotion: p for p in pairs}

    def __contains__(self, label: str) -> bool:
        return label in self.pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def labels(self) -> list[str]:
        return list(self.pairs)

    def opposite(self, label: str) -> str:
        """The opposite emotion of `label`; DataError if the table gives none."""
        pair = self.pairs.get(label)
        if pair is None:
            raise DataError(f"{self.path}: label '{label}' is missing from the emotion table")
        if not pair.opposite:
            raise DataError(f"{self.path}:{pair.line}: label '{label}' has no opposite")
        return pair.opposite

    def problems(self, counts: Mapping[str, int],
                 examples: Mapping[str, str] | None = None) -> list[str]:
        """Every label in `counts` without an opposite, and every opposite with no dialogue.

        `counts` maps each label present in a split to its number of eligible dialogues;
        `examples` optionally maps a label to one conv_id carrying it, to point at the data.
        """
        found = []
        for label in sorted(counts):
            pair = self.pairs.get(label)
            seen = f"{counts[label]} dialogues"
            if examples and label in examples:
                seen += f", e.g. conv_id {examples[label]}"
            if pair is None:
                found.append(f"label '{label}' ({seen}) is missing from the table: no opposite")
            elif not pair.opposite:
                found.append(f"label '{label}' ({seen}) has no opposite (line {pair.line})")
            elif counts.get(pair.opposite, 0) == 0:
                found.append(f"opposite '{pair.opposite}' of '{label}' (line {pair.line}) has no "
                             f"eligible dialogue")
        return found

    def validate(self, counts: Mapping[str, int], where: str = "the split",
                 examples: Mapping[str, str] | None = None) -> None:
        """Raise one DataError listing every problem of `problems(counts, examples)`."""
        found = self.problems(counts, examples)
        if found:
            lines = "\n".join(f"  - {p}" for p in found)
            raise DataError(f"{self.path}: emotion table does not fit {where} "
                            f"({len(found)} problem(s)):\n{lines}")


def load_table(path: str | Path) -> EmotionTable:
    """Read and check a TSV emotion table; DataError naming file, line and value."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: emotion table not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read emotion table ({err})") from None
    rows = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1)]
    rows = [(n, line) for n, line in rows if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise DataError(f"{path}: empty emotion table (expected the header "
                        f"'emotion<TAB>opposite<TAB>source')")
    header_line, header = rows[0]
    columns = tuple(c.strip() for c in header.split("\t"))
    if columns not in (TABLE_COLUMNS, TABLE_COLUMNS[:2]):
        raise DataError(f"{path}:{header_line}: wrong header '{header}'; expected "
                        f"'emotion<TAB>opposite<TAB>source' (tab-separated)")
    errors: list[str] = []
    pairs: dict[str, EmotionPair] = {}
    for n, line in rows[1:]:
        fields = [f.strip() for f in line.split("\t")]
        if not 1 <= len(fields) <= len(columns) or not fields[0]:
            errors.append(f"{path}:{n}: expected {len(columns)} tab-separated fields "
                          f"({', '.join(columns)}), got '{line}'")
            continue
        emotion, opposite, source = (fields + ["", ""])[:3]
        if emotion in pairs:
            errors.append(f"{path}:{n}: duplicate label '{emotion}' "
                          f"(first at line {pairs[emotion].line})")
            continue
        if opposite == emotion:
            errors.append(f"{path}:{n}: label '{emotion}' is its own opposite")
            continue
        pairs[emotion] = EmotionPair(emotion, opposite, source, n)
    if errors:
        raise DataError("\n".join(errors))
    if not pairs:
        raise DataError(f"{path}: emotion table has a header but no labels")
    return EmotionTable(str(path), list(pairs.values()))
