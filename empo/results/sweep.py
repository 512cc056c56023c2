"""Sweeps: a config's `sweep.grid` and `sweep.zip` (dotted keys -> value lists) expanded into one
variant per point.

A point is one value per key: `sweep.zip` lists are taken position by position (point i = the i-th
value of every zipped key), `sweep.grid` lists as a cartesian product, and the two combine as the
product of zipped points (outer) and grid points (inner); keys in config order, zipped keys first.
Each point becomes one variant per entry of `sweep.variants`, named
`<variant>@<key>=<value>[,<key>=<value>]` (e.g. `sft@lora.r=16,lora.lora_alpha=4`), whose config
is the experiment's config with the point's values set. Names only label run directories: code
that needs a point's value takes it from `SweepPoint.overrides`, never by parsing the name.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from empo.config import ExperimentConfig
from empo.errors import ConfigError, EmpoError
from empo.stages import variant_stages

# Keys a sweep may not vary: they name or shape the experiment itself, not a run.
_NOT_SWEEPABLE = ("name", "seeds", "results_dir", "sweep")


@dataclass
class SweepPoint:
    """One variant of a sweep: its run-directory name, the variant trained, the point's values."""

    name: str
    variant: str
    overrides: dict[str, Any]
    config: ExperimentConfig
    zipped: tuple[str, ...] = ()   # the `sweep.zip` keys: they vary together, as one axis


def format_value(value: Any) -> str:
    """A grid value as written in a variant name: YAML-like scalars (64, 0.025, true, null)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e16:
            return f"{value:.1f}"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def point_name(variant: str, overrides: dict[str, Any]) -> str:
    """`<variant>@<key>=<value>[,<key>=<value>]`; refuses values that cannot name a directory."""
    parts = []
    for key, value in overrides.items():
        text = format_value(value)
        if "/" in text or "\\" in text or "\0" in text or not text.strip():
            raise ConfigError(
                f"sweep key {key}: value {value!r} cannot be part of a run directory name "
                "(no '/', '\\' or empty values)"
            )
        parts.append(f"{key}={text}")
    return f"{variant}@{','.join(parts)}"


def _check_values(section: str, values_by_key: dict[str, list[Any]]) -> None:
    for key, values in values_by_key.items():
        if key.split(".")[0] in _NOT_SWEEPABLE:
            raise ConfigError(
                f"sweep.{section}.{key}: '{key.split('.')[0]}' cannot be swept "
                f"(not sweepable: {', '.join(_NOT_SWEEPABLE)})"
            )
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{section}.{key}: expected a non-empty list of values, "
                              f"got {values!r}")


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the grid, keys in their config order; {} -> []."""
    if not grid:
        return []
    _check_values("grid", grid)
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def zip_points(zipped: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Point i = the i-th value of every key (lists of equal length, checked by the config);
    {} -> []."""
    _check_values("zip", zipped)
    keys = list(zipped)
    return [dict(zip(keys, combo)) for combo in zip(*(zipped[k] for k in keys), strict=True)]


def sweep_points(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """The sweep's points: zipped points × grid points (either alone when the other is empty)."""
    zipped = zip_points(cfg.sweep.zip) or [{}]
    grid = grid_points(cfg.sweep.grid) or [{}]
    points = [{**z, **g} for z in zipped for g in grid]
    return [] if points == [{}] else points


def expand_sweep(cfg: ExperimentConfig) -> list[SweepPoint]:
    """One SweepPoint per sweep point and `sweep.variants` entry (points outer, variants inner)."""
    points: list[SweepPoint] = []
    seen: set[str] = set()
    zipped = tuple(cfg.sweep.zip)
    for overrides in sweep_points(cfg):
        for variant in cfg.sweep.variants:
            name = point_name(variant, overrides)
            if name in seen:
                raise ConfigError(f"sweep: point '{name}' appears twice (a repeated value?)")
            seen.add(name)
            try:
                config = cfg.with_overrides(overrides)
            except EmpoError as err:
                raise ConfigError(f"sweep point '{name}': {err}") from None
            points.append(SweepPoint(name, variant, dict(overrides), config, zipped))
    return points


def variant_order(cfg: ExperimentConfig | None, found: list[str] | set[str] = (),
                  configured_only: bool = False) -> list[str]:
    """Table order: baseline, the configured `variants` (sft, sft_dpo, ...), then sweep points
    (config order), then any other found variant sorted. Without a sweep the configured variants
    are expected; with one, only those found. `configured_only`: without the found others."""
    found = set(found)
    points = [p.name for p in expand_sweep(cfg)] if cfg is not None else []
    chosen = (cfg or ExperimentConfig()).variants
    configured = list(dict.fromkeys(["baseline", *(e.variant for v in chosen
                                                   for e in variant_stages(v))]))
    plain = [v for v in configured if v in found or (cfg is not None and not points)]
    known = set(plain) | set(points)
    return plain + points + ([] if configured_only else sorted(found - known))
