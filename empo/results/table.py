"""Text forms of the aggregate: table.csv (all metrics), and table.md / table.tex in the paper's
Table 1 layout (core metrics, arrows, `mean ± sd`, best per column in bold, gaps marked †).

Pure functions of `Row`s; number style as in the paper: means 3 decimals, SDs 2 decimals, no
leading zero for SDs and for the metrics bounded by 1 (MMLU, FBert): `.588 ± .00`, `0.861 ± .03`.
"""
from __future__ import annotations

import csv
import io
from decimal import ROUND_HALF_UP, Context, Decimal
from collections.abc import Iterable, Sequence
from typing import Any

from empo.metrics import metric as metric_of
from empo.metrics import metric_keys
from empo.metrics import metrics as declared_metrics
from empo.results.rows import Row
from empo.stages import variant_label

DAGGER = "†"


# ---------------------------------------------------------------------------- numbers

def rounded(value: float, decimals: int) -> Decimal:
    """`value` as written (its shortest repr) rounded half up: 0.8875 -> 0.888, as by hand."""
    exact = Decimal(repr(float(value)))
    return exact.quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP, Context(prec=1000))


def fmt_number(value: float, decimals: int, leading_zero: bool = True) -> str:
    """`value` rounded half up to `decimals`; `.588`, not `0.588`, when leading_zero is False."""
    text = f"{rounded(value, decimals):f}"
    if text.startswith("-") and Decimal(text) == 0:
        text = text[1:]
    if not leading_zero:
        if text.startswith("0."):
            text = text[1:]
        elif text.startswith("-0."):
            text = "-" + text[2:]
    return text


def fmt_mean(metric: str, value: float) -> str:
    declared = metric_of(metric)
    return fmt_number(value, 3, leading_zero=not (declared and declared.unit_interval))


def fmt_sd(value: float) -> str:
    return fmt_number(value, 2, leading_zero=False)


def best_means(rows: Sequence[Row], metric: str) -> Decimal | None:
    """The best displayed (3-decimal) mean of a column by the metric's direction; None if the
    metric has no direction or fewer than two rows to compare."""
    declared = metric_of(metric)
    if declared is None:
        return None
    means = [rounded(r.stats[metric].mean, 3) for r in rows if r.stats[metric].n > 0]
    if len(means) < 2:
        return None
    return max(means) if declared.higher_is_better else min(means)


def cells(rows: Sequence[Row], bold: tuple[str, str], pm: str, dash: str,
          dagger: str) -> list[list[str]]:
    """The metric cells of each row: `mean ± sd` (the mean alone from one seed run, whose SD is
    undefined), bold mean where best, dagger where incomplete."""
    table = []
    columns = metric_keys()
    best = {m: best_means(rows, m) for m in columns}
    for row in rows:
        line = []
        for metric in columns:
            stat = row.stats[metric]
            if stat.n == 0:
                line.append(dash)
                continue
            mean = fmt_mean(metric, stat.mean)
            if best[metric] is not None and rounded(stat.mean, 3) == best[metric]:
                mean = f"{bold[0]}{mean}{bold[1]}"
            text = f"{mean} {pm} {fmt_sd(stat.sd)}" if stat.n > 1 else mean  # n=1: no SD
            line.append(text + (dagger if row.incomplete(metric) else ""))
        table.append(line)
    return table


def column_titles(arrows: dict[bool, str]) -> list[str]:
    """Each metric column's title: its label and the arrow of its direction."""
    return [f"{m.label} {arrows[m.higher_is_better]}" for m in declared_metrics()]


def gap_notes(rows: Sequence[Row]) -> list[str]:
    """One `variant: seed-3, mmlu@seed-2` line per row with missing runs or metrics."""
    return [f"{r.variant}: {', '.join(r.missing)} (n={r.n} of {r.expected} seeds)"
            for r in rows if r.missing]


# ---------------------------------------------------------------------------- CSV

def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text; floats written exactly (repr), None as an empty field."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    return out.getvalue()


def to_csv(rows: Sequence[Row]) -> str:
    """table.csv: variant, n, <metric>_mean, <metric>_sd per metric, <metric>_n each, missing."""
    metrics = list(rows[0].stats) if rows else list(metric_keys())
    header = ["variant", "n"]
    for metric in metrics:
        header += [f"{metric}_mean", f"{metric}_sd"]
    header += [f"{metric}_n" for metric in metrics] + ["missing"]
    body = []
    for row in rows:
        line: list[Any] = [row.variant, row.n]
        for metric in metrics:
            line += [row.stats[metric].mean, row.stats[metric].sd]
        line += [row.stats[metric].n for metric in metrics] + [";".join(row.missing)]
        body.append(line)
    return csv_text(header, body)


# ---------------------------------------------------------------------------- Markdown

def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def variant_label_md(variant: str) -> str:
    return variant_label(variant) or f"`{_md_escape(variant)}`"


def to_markdown(rows: Sequence[Row], structure: str = "") -> str:
    """The paper's Table 1 as a Markdown table, with a caption line (ending with `structure`, the
    seed structure that made it) and the gaps listed."""
    arrows = {True: "↑", False: "↓"}
    header = ["Model", "n"] + column_titles(arrows)
    lines = ["| " + " | ".join(header) + " |",
             "|:--|--:|" + ":-:|" * len(metric_keys())]
    for row, line in zip(rows, cells(rows, ("**", "**"), "±", "—", DAGGER)):
        lines.append("| " + " | ".join([variant_label_md(row.variant), str(row.n)] + line) + " |")
    lines += ["", "Mean ± SD (sample SD over seeds); n: seed runs read; **bold**: best per column."
              + (f" Seeds: {structure}." if structure else "")]
    notes = gap_notes(rows)
    if notes:
        lines += [f"{DAGGER} incomplete — " + "; ".join(notes)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- LaTeX

_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(c, c) for c in text)


def variant_label_tex(variant: str) -> str:
    return variant_label(variant) or rf"\texttt{{{tex_escape(variant)}}}"


def to_latex(rows: Sequence[Row], structure: str = "") -> str:
    """The paper's Table 1 as a LaTeX table (needs \\usepackage{booktabs})."""
    arrows = {True: r"$\uparrow$", False: r"$\downarrow$"}
    header = ["Model", "$n$"] + column_titles(arrows)
    lines = [
        "% generated by `empo aggregate`; needs \\usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{lr" + "c" * len(metric_keys()) + "}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    for row, line in zip(rows, cells(rows, (r"\textbf{", "}"), r"$\pm$", "--", r"$^\dagger$")):
        lines.append(" & ".join([variant_label_tex(row.variant), str(row.n)] + line) + r" \\")
    caption = r"Mean $\pm$ SD (sample SD over seeds); $n$: seed runs; best per column in bold."
    if structure:
        caption += " Seeds: " + tex_escape(structure) + "."
    notes = gap_notes(rows)
    if notes:
        caption += r" $^\dagger$Incomplete: " + tex_escape("; ".join(notes)) + "."
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}",
              r"\label{tab:empo-results}", r"\end{table}"]
    return "\n".join(lines) + "\n"
