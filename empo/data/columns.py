"""Dialogues as flat columns (pyarrow + numpy) for bulk work at ED scale, and JSON quoting of them.

`Columns` holds the same data as a list of `Dialogue`s: the turns of dialogue i are
`turns[starts[i] : starts[i] + lengths[i]]`. The raw CSV reader produces it directly, and the
preference export builds its JSON lines from it without a Python loop per turn or per row.
"""
from __future__ import annotations

import json.encoder
from dataclasses import dataclass, field
from typing import Any

from empo.data.dialogue import Dialogue


@dataclass
class Columns:
    """conv_ids, emotions, situations: pyarrow string arrays, one entry per dialogue;
    turns: a flat pyarrow string array; starts, lengths: numpy int64 arrays locating each
    dialogue's turns in `turns`."""

    conv_ids: Any
    emotions: Any
    situations: Any
    turns: Any
    starts: Any
    lengths: Any

    def __len__(self) -> int:
        return len(self.conv_ids)

    @classmethod
    def from_dialogues(cls, dialogues: list[Dialogue]) -> "Columns":
        import numpy as np
        import pyarrow as pa

        lengths = np.fromiter((len(d.turns) for d in dialogues), dtype=np.int64,
                              count=len(dialogues))
        starts = (np.cumsum(lengths) - lengths).astype(np.int64)
        text = pa.string()
        return cls(pa.array([d.conv_id for d in dialogues], type=text),
                   pa.array([d.emotion for d in dialogues], type=text),
                   pa.array([d.situation for d in dialogues], type=text),
                   pa.array([t for d in dialogues for t in d.turns], type=text), starts, lengths)

    def dialogues(self) -> list[Dialogue]:
        turns = self.turns.to_pylist()
        return [Dialogue(c, e, s, turns[a:a + n]) for c, e, s, a, n in
                zip(self.conv_ids.to_pylist(), self.emotions.to_pylist(),
                    self.situations.to_pylist(), self.starts.tolist(), self.lengths.tolist())]

    def eligible(self) -> "Columns":
        """The dialogues with a target (at least 2 turns), in order."""
        import numpy as np
        import pyarrow as pa

        keep = np.flatnonzero(self.lengths >= 2)
        if len(keep) == len(self):
            return self
        pick = pa.array(keep)
        return Columns(self.conv_ids.take(pick), self.emotions.take(pick),
                       self.situations.take(pick), self.turns, self.starts[keep],
                       self.lengths[keep])

    def target_indices(self) -> Any:
        """Per dialogue, the index of its last listener turn (lengths must all be >= 2)."""
        return self.lengths - 1 - self.lengths % 2


def ranges(starts: Any, counts: Any) -> Any:
    """Concatenation of range(s, s + c) for each (s, c), as a numpy int64 array."""
    import numpy as np

    total = int(counts.sum())
    offsets = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) - np.repeat(offsets - starts, counts)


def json_escape(values: Any) -> Any:
    """Each string as the inside of its JSON literal, exactly as json.dumps(ensure_ascii=False).

    Only `"`, `\\` and control characters need escaping; the bytes are scanned with numpy and
    just the strings containing one go through json's own encoder. Put the quotes around it.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    raw, bounds = _bytes_and_bounds(values)
    special = np.flatnonzero((raw < 0x20) | (raw == 0x22) | (raw == 0x5C))
    if len(special):
        rows = np.unique(np.searchsorted(bounds, special + bounds[0], side="right") - 1)
        mask = np.zeros(len(values), dtype=bool)
        mask[rows] = True
        fixed = [json.encoder.encode_basestring(text)[1:-1]
                 for text in pc.take(values, pa.array(rows)).to_pylist()]
        values = pc.replace_with_mask(values, pa.array(mask), pa.array(fixed, type=pa.string()))
    return values


def _bytes_and_bounds(values: Any) -> tuple[Any, Any]:
    """The UTF-8 bytes of a pyarrow string array (uint8 numpy view) and its value offsets."""
    import numpy as np
    import pyarrow as pa

    if len(values) == 0:
        return np.zeros(0, dtype=np.uint8), np.zeros(1, dtype=np.int64)
    _, offsets, data = values.buffers()
    wide = pa.types.is_large_string(values.type)
    bounds = np.frombuffer(offsets, dtype=np.int64 if wide else np.int32)[
        values.offset:values.offset + len(values) + 1]
    if data is None:
        return np.zeros(0, dtype=np.uint8), bounds
    return np.frombuffer(data, dtype=np.uint8)[bounds[0]:bounds[-1]], bounds


def write_values(out: Any, values: Any) -> None:
    """Write the concatenated bytes of a pyarrow string array to a binary file."""
    for chunk in getattr(values, "chunks", [values]):
        raw, _ = _bytes_and_bounds(chunk)
        out.write(memoryview(raw))


@dataclass
class LoadResult:
    """The clean dialogues of one split and what cleaning removed.

    malformed: rows dropped (raw: wrong field count or `hit:` text; message form: unusable rows).
    utterances: turns kept in `dialogues`.
    dropped_turns: well-formed turns dropped because their dialogue had a gap or a repeated
    index before them (roles would no longer alternate), or a broken role order (message form).
    `dialogues` and `columns` (the same data, columnar, for bulk export) convert on first use.
    """

    source: str
    split: str
    path: str
    malformed: int = 0
    utterances: int = 0
    dropped_turns: int = 0
    _dialogues: list[Dialogue] | None = field(default=None, repr=False)
    _columns: Any = field(default=None, repr=False)

    @property
    def dialogues(self) -> list[Dialogue]:
        if self._dialogues is None:
            self._dialogues = self._columns.dialogues() if self._columns is not None else []
        return self._dialogues

    @property
    def columns(self) -> Any:
        """`empo.data.columns.Columns` of the dialogues."""
        if self._columns is None:
            self._columns = Columns.from_dialogues(self.dialogues)
        return self._columns
