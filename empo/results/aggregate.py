"""The aggregate: every run's metrics.json -> mean ± sample SD per variant (table.csv/md/tex).

Reading and arithmetic live here; text formatting in `empo.results.table`, the comparison with the
paper in `empo.results.compare`. `n` semantics (DESIGN §5 leaves the per-metric count open):
`n` is the number of seed runs of a variant whose metrics.json was read; `<metric>_n` is how many of
those report the metric; `missing` lists expected runs without metrics (`seed-3`) and expected
metrics absent from a run (`mmlu@seed-2`). Expected seeds are the config's seeds (else every seed
found in the experiment); expected metrics are those the config's `eval.metrics` produce (else every
core metric found anywhere).
"""
from __future__ import annotations

import math
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from empo.config import ExperimentConfig, read_experiment
from empo.errors import EmpoError
from empo.reader import ReadError, read_json
from empo.results import correlation, table
from empo.results.compare import compare_rows, read_table_csv
from empo.results.compare import to_csv as compare_csv
from empo.results.compare import to_markdown as compare_markdown
from empo.metrics import metric_keys, stage_metrics
from empo.results.rows import Row, Runs, Stat
from empo.results.sweep import variant_order
from empo.store import atomic_write_text

_SEED_DIR = re.compile(r"^seed-(-?\d+)$")


# ---------------------------------------------------------------------------- arithmetic (pure)

def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample SD (ddof=1); no SD for one value (undefined, pandas' NaN: an empty cell,
    not a 0 that reads as no spread); (None, None) for none."""
    if not values:
        return None, None
    if len(values) == 1:
        return float(values[0]), None
    return statistics.mean(values), statistics.stdev(values)


def metric_names(runs: Runs) -> list[str]:
    """The core metrics in paper order, then every extra metric found, sorted."""
    extras = {k for seeds in runs.values() for m in seeds.values() for k in m} - set(metric_keys())
    return list(metric_keys()) + sorted(extras)


def expected_metrics(cfg: ExperimentConfig | None, runs: Runs) -> list[str]:
    """Core metrics every run should report: from cfg.eval.metrics, else those found anywhere."""
    if cfg is not None:
        return [key for stage in cfg.eval.metrics for key in stage_metrics(stage)]
    found = {k for seeds in runs.values() for m in seeds.values() for k in m}
    return [m for m in metric_keys() if m in found]


def summarize(variant: str, seeds: dict[int, dict[str, float]], expected_seeds: Iterable[int],
              metrics: Sequence[str], required: Sequence[str]) -> Row:
    """A table row from one variant's runs (seed -> metrics); flags missing runs and metrics."""
    expected = sorted(set(expected_seeds) | set(seeds))
    missing = [f"seed-{s}" for s in expected if s not in seeds]
    for metric in required:
        missing += [f"{metric}@seed-{s}" for s in sorted(seeds) if metric not in seeds[s]]
    stats = {}
    for metric in metrics:
        values = [seeds[s][metric] for s in sorted(seeds) if metric in seeds[s]]
        mean, sd = mean_sd(values)
        stats[metric] = Stat(mean, sd, len(values))
    return Row(variant, len(seeds), len(expected), stats, missing)


def build_rows(runs: Runs, order: Sequence[str], expected_seeds: Iterable[int],
               required: Sequence[str]) -> list[Row]:
    """Rows in table order for every variant in `order` (n=0 rows for variants without runs)."""
    metrics = metric_names(runs)
    expected_seeds = list(expected_seeds)
    return [summarize(v, runs.get(v, {}), expected_seeds, metrics, required) for v in order]


# ---------------------------------------------------------------------------- reading the store

def read_metrics(path: Path) -> dict[str, float]:
    """A run's numeric metrics; EmpoError naming the file if it is not a JSON object of finite
    numbers for the core metrics (other non-numeric keys are ignored)."""
    try:  # the bounded reader: a regular file, size, depth and finite-number limits
        data = read_json(path)
    except ReadError as err:
        raise EmpoError(f"malformed metrics.json: {err}") from None
    if not isinstance(data, dict):
        raise EmpoError(f"{path}: malformed metrics.json (expected a JSON object)")
    metrics = {}
    for key, value in data.items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric and not math.isfinite(value):
            raise EmpoError(f"{path}: malformed metrics.json ('{key}' is {value})")
        if numeric:
            metrics[key] = float(value)
        elif key in metric_keys():
            raise EmpoError(f"{path}: malformed metrics.json ('{key}' is {value!r}, not a number)")
    return metrics


def collect_runs(experiment_dir: Path, skip_bad: bool = False,
                 cfg: ExperimentConfig | None = None) -> tuple[Runs, dict[str, set[int]],
                                                               list[Path]]:
    """(variant -> seed -> metrics, variant -> seeds with a run directory, skipped bad files).
    With `cfg`, exactly the runs it asks for (its variants × its seeds): a seed directory left
    from an earlier `seeds` list or copied in, or a stray variant, is not read, and all such are
    named in one line on stderr."""
    runs_root = Path(experiment_dir) / "runs"
    if not runs_root.is_dir():
        raise EmpoError(f"{experiment_dir}: no runs/ directory (expected results/<experiment>)")
    runs: Runs = {}
    dirs: dict[str, set[int]] = {}
    bad: list[Path] = []
    variant_dirs = sorted(p for p in runs_root.iterdir() if p.is_dir() and not p.is_symlink())
    variants = (set(variant_order(cfg, {p.name for p in variant_dirs}, configured_only=True))
                if cfg is not None else {p.name for p in variant_dirs})
    seeds = set(cfg.seeds) if cfg is not None else None
    ignored = []
    for variant_dir in variant_dirs:
        for seed_dir in sorted(p for p in variant_dir.iterdir() if p.is_dir()):
            match = _SEED_DIR.match(seed_dir.name)
            if not match:
                continue
            seed = int(match.group(1))
            if variant_dir.name not in variants or (seeds is not None and seed not in seeds):
                ignored.append(f"{variant_dir.name}/{seed_dir.name}")
                continue
            dirs.setdefault(variant_dir.name, set()).add(seed)
            path = seed_dir / "metrics.json"
            if not path.exists():
                continue
            try:
                metrics = read_metrics(path)
            except EmpoError:
                if not skip_bad:
                    raise
                bad.append(path)
                continue
            runs.setdefault(variant_dir.name, {})[seed] = metrics
    if ignored:
        print(f"empo: aggregate ignores runs the config does not ask for (its variants × seeds "
              f"{', '.join(map(str, sorted(seeds or ())))}): {', '.join(ignored)}", file=sys.stderr)
    return runs, dirs, bad


def load_rows(experiment_dir: Path, cfg: ExperimentConfig | None = None,
              skip_bad: bool = False) -> tuple[list[Row], Runs]:
    """Read the run store and summarize it: (rows in table order, the per-seed metrics)."""

    cfg = cfg if cfg is not None else read_experiment(experiment_dir)
    runs, dirs, bad = collect_runs(experiment_dir, skip_bad, cfg)
    for path in bad:
        print(f"empo: skipped malformed {path}", file=sys.stderr)
    if not runs:
        raise EmpoError(f"{experiment_dir}: no readable runs/<variant>/seed-<s>/metrics.json")
    order = variant_order(cfg, set(dirs) | set(runs))
    seeds = cfg.seeds if cfg is not None else sorted({s for v in dirs.values() for s in v})
    return build_rows(runs, order, seeds, expected_metrics(cfg, runs)), runs


def aggregate(experiment_dir: Path, cfg: ExperimentConfig | None = None, skip_bad: bool = False,
              compare: Path | None = None) -> Path:
    """Write table.csv, table.md, table.tex (and compare.csv/md with `compare`); return table.csv.

    Everything is read and formatted before the first write, and each file is written atomically:
    an error leaves no new or partial table behind.
    """
    experiment_dir = Path(experiment_dir)
    cfg = cfg if cfg is not None else read_experiment(experiment_dir)
    rows, runs = load_rows(experiment_dir, cfg, skip_bad)
    structure = (cfg.dpo.seed_structure(cfg.seeds)
                 if cfg is not None and "sft_dpo" in cfg.sweep.variants else "")
    outputs = {
        "table.csv": table.to_csv(rows),
        "table.md": table.to_markdown(rows, structure),
        "table.tex": table.to_latex(rows, structure),
    }
    found = correlation.correlations(experiment_dir, runs, [row.variant for row in rows])
    if found:  # FBert and diff-EPITOME both measured
        outputs[correlation.FILE] = correlation.to_csv(found)
    if compare is not None:
        comparisons = compare_rows(rows, read_table_csv(Path(compare)))
        outputs["compare.csv"] = compare_csv(comparisons)
        outputs["compare.md"] = compare_markdown(comparisons, Path(compare).name)
    for name, text in outputs.items():
        atomic_write_text(experiment_dir / name, text)
    return experiment_dir / "table.csv"
