"""The table's leaf types: a cell (mean, SD, n) and a row (columns: `empo.metrics`)."""
from __future__ import annotations

from dataclasses import dataclass, field


Runs = dict[str, dict[int, dict[str, float]]]  # variant -> seed -> metric -> value


@dataclass
class Stat:
    """One table cell: mean and sample SD over the runs reporting the metric."""

    mean: float | None
    sd: float | None
    n: int


@dataclass
class Row:
    """One variant of the table."""

    variant: str
    n: int                                   # runs whose metrics.json was read
    expected: int                            # seeds expected for the variant
    stats: dict[str, Stat]
    missing: list[str] = field(default_factory=list)  # "seed-3", "mmlu@seed-2"

    def incomplete(self, metric: str) -> bool:
        """True if the metric's cell averages fewer runs than expected because of a flagged gap."""
        gap = any(m.startswith("seed-") or m.startswith(f"{metric}@") for m in self.missing)
        return gap and self.stats[metric].n < self.expected
