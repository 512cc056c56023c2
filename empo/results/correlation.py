"""Does FBert go with diff-EPITOME? Pearson and Spearman correlations per variant (correlations.csv).

The paper (§4) says BERTScore shows no correlation with diff-EPITOME; this makes that checkable.
Two levels, for FBert against each diff-EPITOME dimension (ER, EX, IP):

- `example`: over every scored prediction of the variant's runs, FBert of the pair
  (bertscore_items.jsonl) against the pair's squared level difference, (pred - ref)^2
  (epitome_items.jsonl) — the per-example term whose mean is diff-EPITOME. A run whose eval was
  shared from another seed (shared_from.json, the greedy baseline) is counted once, in its source.
- `run`: over the variant's runs, the run's FBert against its diff-EPITOME (metrics.json).

Variant `all` pools every variant. A correlation is empty where it is undefined (fewer than 3
points, or a constant side). Spearman is Pearson on average ranks (ties share their mean rank).
Standard library only.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from empo.errors import EmpoError
from empo.reader import ReadError, loads_json, read_text
from empo.results.rows import Runs

DIMENSIONS = ("er", "ex", "ip")
FILE = "correlations.csv"
EPITOME_ITEMS = "epitome_items.jsonl"
BERTSCORE_ITEMS = "bertscore_items.jsonl"
ITEMS_LIMIT = 256 << 20  # bytes per per-item file


@dataclass(frozen=True)
class Correlation:
    """One line of correlations.csv."""

    variant: str
    level: str              # example | run
    dimension: str          # diff_er | diff_ex | diff_ip
    n: int
    pearson: float | None
    spearman: float | None


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r, or None where undefined (fewer than 3 points or a constant side)."""
    if len(x) != len(y):
        raise ValueError("pearson: x and y differ in length")
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return statistics.correlation(x, y)


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson's r of the average ranks."""
    return pearson(ranks(x), ranks(y))


def read_items(path: Path) -> list[dict]:
    """A per-item JSONL file of the run store (bounded read); EmpoError naming file and line."""
    try:
        text = read_text(path, limit=ITEMS_LIMIT)
    except ReadError as err:
        raise EmpoError(f"{path}: {err}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                row = loads_json(line, f"{path}:{number}")
            except ReadError as err:
                raise EmpoError(str(err)) from None
            if not isinstance(row, dict):
                raise EmpoError(f"{path}:{number}: expected a JSON object")
            rows.append(row)
    return rows


def example_points(run_dir: Path) -> list[tuple[float, dict[str, float]]]:
    """(FBert, {diff_x: (pred_x - ref_x)^2}) per scored prediction of a run; [] when the run has
    no per-item files (an older run) or shares its eval from another seed."""
    run_dir = Path(run_dir)
    epitome, bert = run_dir / EPITOME_ITEMS, run_dir / BERTSCORE_ITEMS
    if (run_dir / "shared_from.json").exists() or not (epitome.is_file() and bert.is_file()):
        return []
    levels, scores = read_items(epitome), read_items(bert)
    if len(levels) != len(scores):
        raise EmpoError(f"{run_dir}: {EPITOME_ITEMS} has {len(levels)} rows, {BERTSCORE_ITEMS} "
                        f"{len(scores)}: not the same scored predictions (rerun both stages)")
    points = []
    for number, (level, score) in enumerate(zip(levels, scores), start=1):
        if level.get("conv_id") != score.get("conv_id"):
            raise EmpoError(f"{run_dir}: line {number} is {level.get('conv_id')!r} in "
                            f"{EPITOME_ITEMS} but {score.get('conv_id')!r} in {BERTSCORE_ITEMS}")
        try:
            diffs = {f"diff_{d}": (float(level[f"pred_{d}"]) - float(level[f"ref_{d}"])) ** 2
                     for d in DIMENSIONS}
            points.append((float(score["fbert"]), diffs))
        except (KeyError, TypeError, ValueError) as err:
            raise EmpoError(f"{run_dir}: line {number} of the per-item files lacks a number "
                            f"({err})") from None
    return points


def correlations(experiment_dir: Path, runs: Runs, variants: Sequence[str]) -> list[Correlation]:
    """Per variant (then `all`), both levels, FBert against each diff-EPITOME dimension."""
    examples: dict[str, list[tuple[float, dict[str, float]]]] = {}
    for variant in variants:
        for seed in sorted(runs.get(variant, {})):
            found = example_points(Path(experiment_dir) / "runs" / variant / f"seed-{seed}")
            examples.setdefault(variant, []).extend(found)
    run_points = {v: [(m["fbert"], {f"diff_{d}": m[f"diff_{d}"] for d in DIMENSIONS})
                      for _, m in sorted(runs.get(v, {}).items())
                      if "fbert" in m and all(f"diff_{d}" in m for d in DIMENSIONS)]
                  for v in variants}
    out: list[Correlation] = []
    groups = [(v, examples.get(v, []), run_points[v]) for v in variants]
    groups.append(("all", [p for v in variants for p in examples.get(v, [])],
                   [p for v in variants for p in run_points[v]]))
    for variant, example, run in groups:
        for level, points in (("example", example), ("run", run)):
            if not points:
                continue
            fbert = [p[0] for p in points]
            for dimension in (f"diff_{d}" for d in DIMENSIONS):
                diff = [p[1][dimension] for p in points]
                out.append(Correlation(variant, level, dimension, len(points),
                                       pearson(fbert, diff), spearman(fbert, diff)))
    return out


def to_csv(rows: Sequence[Correlation]) -> str:
    """correlations.csv: variant, level, dimension, n, pearson, spearman (empty: undefined)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", "level", "metric", "against", "n", "pearson", "spearman"])
    for row in rows:
        writer.writerow([row.variant, row.level, "fbert", row.dimension, row.n,
                         _number(row.pearson), _number(row.spearman)])
    return buffer.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6f}"
