"""Our aggregate next to a reference table (the paper's Table 1, `results/paper/table1.csv`).

The reference has table.csv's schema (`variant, n, <metric>_mean, <metric>_sd`, optional
`<metric>_n`), so two experiments can be compared too. For every variant and metric of the
reference: ours, the reference's, the difference (ours − reference) and that difference in units of
the reference SD; where the reference SD is 0 (the paper's `± .00`) the difference is reported in
absolute units and flagged `abs`.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from empo.errors import EmpoError
from empo.metrics import metric, metric_keys
from empo.reader import ReadError, read_text
from empo.results.rows import Row, Stat
from empo.results.table import csv_text, fmt_mean, fmt_number, fmt_sd

Reference = dict[str, dict[str, Stat]]  # variant -> metric -> Stat


@dataclass
class Comparison:
    """One (variant, metric) line of the comparison."""

    variant: str
    metric: str
    ours: Stat | None
    paper: Stat
    diff: float | None        # ours − paper
    diff_sd: float | None     # diff / paper SD; None where the paper SD is 0 (unit "abs")
    unit: str                 # "sd" | "abs" (paper SD is 0) | "missing" (no run of ours)


def _float(value: str, path: Path, line: int, column: str) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise EmpoError(f"{path}:{line}: column '{column}' is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise EmpoError(f"{path}:{line}: column '{column}' is not finite: {value!r}")
    return number


def read_table_csv(path: Path) -> Reference:
    """A table.csv-shaped file -> variant -> metric -> Stat (n from `<metric>_n`, else `n`)."""
    try:  # the bounded reader: a FIFO or device is refused without blocking
        text = read_text(path, limit=16 << 20, strict=True)
    except ReadError as err:
        raise EmpoError(f"{err} (reference table)") from None
    reader = csv.DictReader(text.splitlines())
    columns = reader.fieldnames or []
    if "variant" not in columns or "n" not in columns:
        raise EmpoError(f"{path}: expected columns 'variant, n, <metric>_mean, <metric>_sd'")
    metrics = [c[: -len("_mean")] for c in columns if c.endswith("_mean")]
    for metric in metrics:
        if f"{metric}_sd" not in columns:
            raise EmpoError(f"{path}: column '{metric}_mean' has no '{metric}_sd' beside it")
    table: Reference = {}
    for line, record in enumerate(reader, start=2):
        n = _float(record["n"], path, line, "n")
        stats = {}
        for metric in metrics:
            mean = _float(record[f"{metric}_mean"], path, line, f"{metric}_mean")
            if mean is None:
                continue
            sd = _float(record[f"{metric}_sd"], path, line, f"{metric}_sd") or 0.0
            count = _float(record.get(f"{metric}_n") or "", path, line, f"{metric}_n")
            stats[metric] = Stat(mean, sd, int(count if count is not None else n or 0))
        table[record["variant"]] = stats
    return table


def compare_rows(rows: Sequence[Row], reference: Reference) -> list[Comparison]:
    """One Comparison per (reference variant, reference metric), in the reference's order."""
    ours = {row.variant: row for row in rows}
    result = []
    for variant, stats in reference.items():
        for metric, paper in stats.items():
            row = ours.get(variant)
            mine = row.stats.get(metric) if row is not None else None
            if mine is None or mine.n == 0:
                result.append(Comparison(variant, metric, None, paper, None, None, "missing"))
                continue
            diff = mine.mean - paper.mean
            if paper.sd > 0:
                result.append(Comparison(variant, metric, mine, paper, diff, diff / paper.sd, "sd"))
            else:
                result.append(Comparison(variant, metric, mine, paper, diff, None, "abs"))
    return result


def to_csv(comparisons: Sequence[Comparison]) -> str:
    """compare.csv: one line per (variant, metric)."""
    header = ["variant", "metric", "ours_mean", "ours_sd", "ours_n", "paper_mean", "paper_sd",
              "paper_n", "diff", "diff_in_paper_sd", "unit"]
    body = []
    for c in comparisons:
        mine = c.ours or Stat(None, None, 0)
        body.append([c.variant, c.metric, mine.mean, mine.sd, mine.n, c.paper.mean, c.paper.sd,
                     c.paper.n, c.diff, c.diff_sd, c.unit])
    return csv_text(header, body)


def _stat_text(metric: str, stat: Stat) -> str:
    mean = fmt_mean(metric, stat.mean) if metric in metric_keys() else fmt_number(stat.mean, 3)
    spread = f" ± {fmt_sd(stat.sd)}" if stat.sd is not None else ""
    return f"{mean}{spread} (n={stat.n})"


def _signed(value: float, decimals: int) -> str:
    """`+0.012`, `-0.012`; a value that rounds to zero is `0.000` (no `-0.000`)."""
    text = f"{value:+.{decimals}f}"
    return text[1:] if float(text) == 0 else text


def to_markdown(comparisons: Sequence[Comparison], reference_name: str = "paper") -> str:
    """compare.md: ours | paper | Δ | Δ in paper SDs (or `abs` where the paper SD is 0)."""
    arrows = {True: " ↑", False: " ↓"}
    lines = [f"| variant | metric | ours | {reference_name} | Δ (ours − ref) | Δ / ref SD |",
             "|:--|:--|:-:|:-:|--:|--:|"]
    for c in comparisons:
        declared = metric(c.metric)
        label = declared.label + arrows[declared.higher_is_better] if declared else c.metric
        ours = _stat_text(c.metric, c.ours) if c.ours else "—"
        diff = _signed(c.diff, 3) if c.diff is not None else "—"
        if c.unit == "sd":
            units = f"{_signed(c.diff_sd, 2)} SD"
        elif c.unit == "abs":
            units = "abs (ref SD 0)"
        else:
            units = "missing"
        lines.append(f"| {c.variant} | {label} | {ours} | {_stat_text(c.metric, c.paper)} | "
                     f"{diff} | {units} |")
    lines += ["", "Δ / ref SD: the difference in units of the reference's SD; where that SD is 0 "
              "the difference is absolute (`abs`)."]
    return "\n".join(lines) + "\n"
