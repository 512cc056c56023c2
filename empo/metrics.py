"""The metric declarations: one `register_metric` per metrics.json key the table reports — its
label, direction, bounds, column and the eval stage that writes it (after lm-eval's
`register_metric(..., higher_is_better=...)`). The table, the aggregate, the plots, the stage
registry and the config's `eval.metrics` read these; nobody keeps a list of their own.

Pure standard library: the config layer may import it.
"""
from __future__ import annotations

from dataclasses import dataclass

from empo.errors import ConfigError


@dataclass(frozen=True)
class Metric:
    """What the project knows about one reported metric."""

    key: str                                  # the metrics.json key (and table.csv column stem)
    label: str                                # the table's column title
    stage: str                                # the eval stage kind that writes it
    higher_is_better: bool
    bounds: tuple[float, float] | None = None  # known range; (0, 1): written `.588`, as in the paper
    column: int = 0                           # position among the table's columns

    @property
    def unit_interval(self) -> bool:
        """In [0, 1]: written without the leading zero (`.588`), as in the paper."""
        return self.bounds == (0.0, 1.0)


_METRICS: dict[str, Metric] = {}


def register_metric(key: str, label: str, stage: str, higher_is_better: bool,
                    bounds: tuple[float, float] | None = None, column: int | None = None) -> Metric:
    """Declare a metric (once per key); `column` defaults to after every declared one."""
    if key in _METRICS:
        raise ConfigError(f"metric {key!r} is declared twice")
    place = len(_METRICS) if column is None else column
    metric = Metric(key, label, stage, higher_is_better, bounds, place)
    _METRICS[key] = metric
    return metric


def unregister_metric(key: str) -> None:
    """Remove a declaration (tests that declare a metric of their own)."""
    _METRICS.pop(key, None)


def metrics() -> tuple[Metric, ...]:
    """Every declared metric in column order (the table's order)."""
    return tuple(sorted(_METRICS.values(), key=lambda m: m.column))


def metric_keys() -> tuple[str, ...]:
    """The table's metric columns, in order."""
    return tuple(m.key for m in metrics())


def metric(key: str) -> Metric | None:
    """The declaration of `key`, None for an extra (a key no one declared)."""
    return _METRICS.get(key)


def metric_stages() -> tuple[str, ...]:
    """The eval stage kinds that write a declared metric, in declaration order (`eval.metrics`)."""
    return tuple(dict.fromkeys(m.stage for m in _METRICS.values()))


def stage_metrics(stage: str) -> tuple[str, ...]:
    """The keys stage kind `stage` writes, in declaration order."""
    return tuple(m.key for m in _METRICS.values() if m.stage == stage)


UNIT = (0.0, 1.0)
# Declaration order = the stages' order in `eval.metrics`' error message; `column` = Table 1's.
register_metric("diff_er", "diff-ER", "epitome", higher_is_better=False, column=1)
register_metric("diff_ex", "diff-EX", "epitome", higher_is_better=False, column=2)
register_metric("diff_ip", "diff-IP", "epitome", higher_is_better=False, column=3)
register_metric("fbert", "FBert", "bertscore", higher_is_better=True, bounds=UNIT, column=4)
register_metric("mmlu", "MMLU", "mmlu", higher_is_better=True, bounds=UNIT, column=0)
