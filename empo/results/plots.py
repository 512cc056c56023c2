"""The paper's figures from a run store: PNGs under plots/, each with its data as a CSV beside it.

fig1: MMLU vs LoRA α (sweep over `lora.lora_alpha`); fig2: diff-EPITOME (ER, EX, IP) vs LoRA r on
a log2 axis (sweep over `lora.r`, α zipped with it or fixed); fig3: mean, min–max spread and per-seed points of the average
diff-EPITOME vs DPO β (sweep over `dpo.beta`); train_<variant>: loss (and DPO rewards/margins,
rewards/accuracies) per seed from train_log.jsonl; fbert_vs_diff_epitome: the scatter behind
correlations.csv. A point's x value comes from the resolved config
(experiment.yaml) through `expand_sweep`, never from a variant's name. Figures without data are
skipped with a note on stderr. matplotlib is used through its object API with the Agg canvas.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from empo.config import ExperimentConfig, read_experiment
from empo.metrics import metric, stage_metrics
from empo.reader import ReadError, loads_json, read_text
from empo.results.aggregate import Runs, collect_runs, mean_sd
from empo.results.correlation import DIMENSIONS, example_points
from empo.results.sweep import SweepPoint, expand_sweep, format_value, variant_order
from empo.results.table import csv_text
from empo.stages import variant_label
from empo.store import atomic_path, atomic_write_text

SIZE = (6.4, 4.0)    # inches at DPI: 640 × 400 px per panel
DPI = 100
EPITOME = stage_metrics("epitome")  # diff_er, diff_ex, diff_ip
TRAIN_KEYS = ("loss", "rewards/margins", "rewards/accuracies")


@dataclass
class SweepFigure:
    """A figure of metric means (± SD) against one swept key."""

    name: str
    key: str
    metrics: tuple[str, ...]
    xlabel: str
    ylabel: str
    title: str


FIGURES = (
    SweepFigure("fig1_mmlu_vs_lora_alpha", "lora.lora_alpha", ("mmlu",), "LoRA α (log₂ axis)",
                "MMLU ↑", "Impact of LoRA α on MMLU"),
    SweepFigure("fig2_diff_epitome_vs_lora_r", "lora.r", EPITOME, "LoRA rank r (log₂ axis)",
                "diff-EPITOME ↓", "Impact of LoRA rank on diff-EPITOME"),
)
BETA_KEY = "dpo.beta"


def _label(key: str) -> str:
    declared = metric(key)
    return declared.label if declared else key


def _note(text: str) -> None:
    print(f"empo plot: {text}", file=sys.stderr)


def _new_figure(panels: int = 1) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(SIZE[0] * panels, SIZE[1]), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _value_ticks(ax: Any, xs: Sequence[Any]) -> None:
    """Ticks at the swept values, written as in the variant names (64, 0.025), no minor ticks."""
    values = sorted(set(xs))
    ax.set_xticks(values, [format_value(x) for x in values])
    ax.minorticks_off()


def _skipped(name: str, points: Sequence[SweepPoint], key: str, what: str) -> list[Path]:
    if any(key in p.overrides for p in points):
        _note(f"{name} skipped: no {what} results for the {key} sweep points")
    else:
        _note(f"{name} skipped: the sweep does not vary {key}")
    return []


def _save(fig: Any, png: Path, csv_files: dict[Path, str]) -> list[Path]:
    """Write the PNG and its CSVs atomically; returns [the PNG]."""
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    for path, text in csv_files.items():
        atomic_write_text(path, text)
    return [png]


def series_of(points: Sequence[SweepPoint], key: str) -> dict[str, list[tuple[Any, SweepPoint]]]:
    """Sweep points varying `key`, grouped into lines: one per variant and value of the other
    swept keys; keys zipped with `key` move along the line (named in the label with their first
    and last value, `lora.lora_alpha=4…512`). Each line's (x, point) sorted by x."""
    lines: dict[str, list[tuple[Any, SweepPoint]]] = {}
    along: dict[str, list[str]] = {}
    for point in points:
        if key not in point.overrides:
            continue
        tied = point.zipped if key in point.zipped else ()
        label = variant_label(point.variant) or point.variant
        others = [f"{k}={format_value(v)}" for k, v in point.overrides.items()
                  if k != key and k not in tied]
        if others:
            label += " (" + ", ".join(others) + ")"
        lines.setdefault(label, []).append((point.overrides[key], point))
        along[label] = [k for k in tied if k != key]
    out = {}
    for label, line in lines.items():
        line.sort(key=lambda item: item[0])
        ends = [f"{k}={format_value(line[0][1].overrides[k])}…"
                f"{format_value(line[-1][1].overrides[k])}" for k in along[label]]
        out[label + (f" [{', '.join(ends)}]" if ends else "")] = line
    return out


def sweep_table(points: Sequence[SweepPoint], runs: Runs, key: str,
                metrics: Sequence[str]) -> list[list[Any]]:
    """Rows (series, variant, x, metric, mean, sd, n) of every point with data, as in table.csv."""
    rows = []
    for label, line in series_of(points, key).items():
        for x, point in line:
            seeds = runs.get(point.name, {})
            for metric in metrics:
                values = [seeds[s][metric] for s in sorted(seeds) if metric in seeds[s]]
                if values:
                    mean, sd = mean_sd(values)
                    rows.append([label, point.name, x, metric, mean, sd, len(values)])
    return rows


def plot_sweep(spec: SweepFigure, points: Sequence[SweepPoint], runs: Runs,
               out_dir: Path) -> list[Path]:
    """fig1 / fig2: mean ± SD of each metric against the swept key, log2 x axis."""
    rows = sweep_table(points, runs, spec.key, spec.metrics)
    if not rows:
        return _skipped(spec.name, points, spec.key, "/".join(spec.metrics))
    fig = _new_figure()
    ax = fig.add_subplot()
    for label in dict.fromkeys(r[0] for r in rows):
        for metric in spec.metrics:
            line = [r for r in rows if r[0] == label and r[3] == metric]
            if not line:
                continue
            name = label if len(spec.metrics) == 1 else f"{label}: {_label(metric)}"
            ax.errorbar([r[2] for r in line], [r[4] for r in line],
                        yerr=[r[5] or 0.0 for r in line], marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    _value_ticks(ax, [r[2] for r in rows])
    ax.set(xlabel=spec.xlabel, ylabel=spec.ylabel, title=spec.title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    header = ["series", "variant", spec.key, "metric", "mean", "sd", "n"]
    return _save(fig, out_dir / f"{spec.name}.png",
                 {out_dir / f"{spec.name}.csv": csv_text(header, rows)})


def beta_tables(points: Sequence[SweepPoint],
                runs: Runs) -> tuple[list[list[Any]], list[list[Any]]]:
    """fig3 data: per-seed average diff-EPITOME rows and per-point summary rows
    (series, variant, beta, n, mean, sd, min, max)."""
    per_seed, summary = [], []
    for label, line in series_of(points, BETA_KEY).items():
        for beta, point in line:
            seeds = runs.get(point.name, {})
            values = []
            for seed in sorted(seeds):
                if all(m in seeds[seed] for m in EPITOME):
                    avg = sum(seeds[seed][m] for m in EPITOME) / len(EPITOME)
                    values.append(avg)
                    per_seed.append([label, point.name, beta, seed,
                                     *(seeds[seed][m] for m in EPITOME), avg])
            if values:
                mean, sd = mean_sd(values)
                summary.append([label, point.name, beta, len(values), mean, sd,
                                min(values), max(values)])
    return per_seed, summary


def plot_beta(points: Sequence[SweepPoint], runs: Runs, out_dir: Path) -> list[Path]:
    """fig3: stability of DPO over seeds — mean, min–max band, ±SD bars and per-seed points."""
    per_seed, summary = beta_tables(points, runs)
    name = "fig3_diff_epitome_spread_vs_dpo_beta"
    if not summary:
        return _skipped(name, points, BETA_KEY, "diff-EPITOME")
    fig = _new_figure()
    ax = fig.add_subplot()
    for label in dict.fromkeys(r[0] for r in summary):
        line = [r for r in summary if r[0] == label]
        xs = [r[2] for r in line]
        drawn = ax.errorbar(xs, [r[4] for r in line], yerr=[r[5] or 0.0 for r in line], marker="o",
                            capsize=3, label=f"{label}: mean ± SD")
        color = drawn[0].get_color()
        ax.fill_between(xs, [r[6] for r in line], [r[7] for r in line], color=color, alpha=0.2,
                        label=f"{label}: min–max")
        seeds = [r for r in per_seed if r[0] == label]
        ax.scatter([r[2] for r in seeds], [r[-1] for r in seeds], color=color, s=12, alpha=0.7,
                   label=f"{label}: seeds")
    ax.set_xscale("log")
    _value_ticks(ax, [r[2] for r in summary])
    ax.set(xlabel="DPO β (log axis)", ylabel="diff-EPITOME, mean of ER/EX/IP ↓",
           title="Stability of DPO over seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, out_dir / f"{name}.png", {
        out_dir / f"{name}.csv": csv_text(
            ["series", "variant", BETA_KEY, "n", "mean", "sd", "min", "max"], summary),
        out_dir / f"{name}_seeds.csv": csv_text(
            ["series", "variant", BETA_KEY, "seed", *EPITOME, "diff_epitome"], per_seed),
    })


TRAIN_LOG_LIMIT = 256 << 20     # a training log larger than this is not read


def read_train_log(path: Path) -> list[dict[str, float]]:
    """Logged training steps (rows with `step` and a TRAIN_KEYS value); unreadable lines are
    skipped with a note (a run killed mid-write leaves a partial last line)."""
    rows = []
    try:  # the bounded reader: a FIFO or a link out of the tree is no training log
        text = read_text(path, limit=TRAIN_LOG_LIMIT, follow=False)
    except ReadError as err:
        _note(f"{err}; skipped")
        return rows
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = loads_json(line, f"{path}:{number}")
        except ReadError:
            _note(f"{path}:{number}: unreadable line skipped")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
            continue
        values = {k: float(record[k]) for k in TRAIN_KEYS
                  if isinstance(record.get(k), (int, float)) and not isinstance(record[k], bool)}
        if values:
            rows.append({"step": float(record["step"]), **values})
    return rows


def _file_stem(variant: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=@-]", "_", variant)


def plot_training(experiment_dir: Path, variants: Sequence[str], out_dir: Path) -> list[Path]:
    """train_<variant>.png: loss per seed; with DPO keys also rewards/margins and accuracies."""
    written = []
    for variant in variants:
        logs = {}
        for seed_dir in sorted((experiment_dir / "runs" / variant).glob("seed-*/train_log.jsonl")):
            rows = read_train_log(seed_dir)
            if rows:
                logs[seed_dir.parent.name] = rows
        if not logs:
            continue
        keys = [k for k in TRAIN_KEYS if any(k in r for rows in logs.values() for r in rows)]
        fig = _new_figure(len(keys))
        for i, key in enumerate(keys, start=1):
            ax = fig.add_subplot(1, len(keys), i)
            for seed, rows in logs.items():
                points = [(r["step"], r[key]) for r in rows if key in r]
                ax.plot([p[0] for p in points], [p[1] for p in points], label=seed)
            ax.set(xlabel="step", ylabel=key, title=f"{variant}: {key}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
        body = [[variant, seed, r["step"], *(r.get(k) for k in TRAIN_KEYS)]
                for seed, rows in logs.items() for r in rows]
        stem = f"train_{_file_stem(variant)}"
        written += _save(fig, out_dir / f"{stem}.png", {
            out_dir / f"{stem}.csv": csv_text(["variant", "seed", "step", *TRAIN_KEYS], body)})
    if not written:
        _note("training curves skipped: no runs/*/seed-*/train_log.jsonl with loss")
    return written


def plot_correlation(experiment_dir: Path, variants: Sequence[str], runs: Runs,
                     out_dir: Path) -> list[Path]:
    """fbert_vs_diff_epitome.png: per ER/EX/IP panel, FBert against the squared level difference
    of every scored prediction (small points) and against each run's diff-EPITOME (large), per
    variant; correlations.csv (`empo aggregate`) holds the coefficients."""
    body = []
    for variant in variants:
        for seed in sorted(runs.get(variant, {})):
            run = experiment_dir / "runs" / variant / f"seed-{seed}"
            body += [[variant, seed, "example", fbert, *(diffs[f"diff_{d}"] for d in DIMENSIONS)]
                     for fbert, diffs in example_points(run)]
            metrics = runs[variant][seed]
            if "fbert" in metrics and all(f"diff_{d}" in metrics for d in DIMENSIONS):
                body.append([variant, seed, "run", metrics["fbert"],
                             *(metrics[f"diff_{d}"] for d in DIMENSIONS)])
    if not any(row[2] == "example" for row in body):
        _note("fbert_vs_diff_epitome skipped: no run with per-example scores "
              "(epitome_items.jsonl and bertscore_items.jsonl)")
        return []
    fig = _new_figure(len(DIMENSIONS))
    for i, d in enumerate(DIMENSIONS, start=1):
        ax = fig.add_subplot(1, len(DIMENSIONS), i)
        for k, variant in enumerate(v for v in variants if any(r[0] == v for r in body)):
            for level, size, alpha in (("example", 6, 0.25), ("run", 40, 0.9)):
                rows = [r for r in body if r[0] == variant and r[2] == level]
                ax.scatter([r[3] for r in rows], [r[3 + i] for r in rows], s=size, alpha=alpha,
                           color=f"C{k}", label=f"{variant} ({level})" if rows else None)
        ax.set(xlabel="FBert ↑", ylabel=f"diff-{d.upper()} ↓ (per example: (pred − ref)²)",
               title=f"FBert vs diff-{d.upper()}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    header = ["variant", "seed", "level", "fbert", *(f"diff_{d}" for d in DIMENSIONS)]
    return _save(fig, out_dir / "fbert_vs_diff_epitome.png",
                 {out_dir / "fbert_vs_diff_epitome.csv": csv_text(header, body)})


def plot(experiment_dir: Path, cfg: ExperimentConfig | None = None,
         skip_bad: bool = False) -> list[Path]:
    """Write every figure the run store has data for under plots/ (PNG + CSV); returns the PNGs."""
    experiment_dir = Path(experiment_dir)
    cfg = cfg if cfg is not None else read_experiment(experiment_dir)
    runs, dirs, bad = collect_runs(experiment_dir, skip_bad)
    for path in bad:
        _note(f"skipped malformed {path}")
    points = expand_sweep(cfg) if cfg is not None else []
    if not points:
        _note("sweep figures skipped: no sweep in "
              + ("the config" if cfg is not None else f"{experiment_dir}/experiment.yaml (absent)"))
    out_dir = experiment_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written: list[Path] = []
    if points:
        for spec in FIGURES:
            written += plot_sweep(spec, points, runs, out_dir)
        written += plot_beta(points, runs, out_dir)
    order = variant_order(cfg, set(dirs) | set(runs))
    written += plot_training(experiment_dir, order, out_dir)
    written += plot_correlation(experiment_dir, order, runs, out_dir)
    return written
