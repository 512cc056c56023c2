"""Property-based (hypothesis): an override of any config field, generated from the field's type
with shell metacharacters, control and bidi characters, huge and non-finite numbers, nested
structures and paths with `..`, `~` and symlinks, ends in exit 0 or in exit 2 with one line and
no traceback; and neither `config validate` nor `submit --dry-run` changes a file outside the
project's own outputs (the dry run's scripts under results/<name>/dry-run/). Issue 22."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from empo.cli import main
from empo.config import ExperimentConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SMOKE = PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"
SHELL = ["$(touch PWNED)", "`id`", ";", "|", "&", "'", '"', " ", "\\", "*", "#", "\n", "\r", "\t",
         "\x1b[2J", "\x00", "\u202e", "\u2066", "\u2028", "..", "~", "/", ":", ","]


def config_fields() -> dict[str, Any]:
    """Every dotted config key -> its type hint (nested sections walked)."""
    out: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "root":
                continue
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}{f.name}.")
            else:
                out[prefix + f.name] = hint
    walk(ExperimentConfig, "")
    return out


FIELDS = config_fields()
hostile_text = st.lists(st.one_of(st.sampled_from(SHELL), st.text(max_size=4)), max_size=6).map(
    "".join)
paths = st.sampled_from(["../../etc/passwd", "~/x", "~root/.ssh", "/dev/zero", "/tmp/$(id)",
                         "{ws}/link-out", "{ws}/link-out/../x", "a/../../b", "empo:../../x"])
numbers = st.one_of(st.integers(min_value=-10**40, max_value=10**40).map(str),
                    st.sampled_from([".nan", ".inf", "-.inf", "1e400", "1" + "0" * 400,
                                     "9" * 5000, "0x10", "1_000", "2001-13-01", "2001-12-01"]),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr))


def yaml_of(value: str) -> st.SearchStrategy[str]:
    """`value` as it might be typed: bare, or quoted as a YAML string."""
    return st.sampled_from([value, json.dumps(value)])


def value_for(hint: Any, depth: int = 0) -> st.SearchStrategy[str]:
    """Override text for a field of type `hint` (and text of other types, and nests)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(value_for(a, depth) for a in typing.get_args(hint)
                           if a is not type(None)), st.just("null"))
    if depth > 2:
        return numbers
    if origin is list:
        (item,) = typing.get_args(hint)
        return st.lists(value_for(item, depth + 1), max_size=3).map(lambda v: f"[{', '.join(v)}]")
    if origin is dict:
        _, item = typing.get_args(hint)
        return st.lists(st.tuples(hostile_text.flatmap(yaml_of), value_for(item, depth + 1)),
                        max_size=3).map(lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv)
                                        + "}")
    if hint in (int, float):
        return numbers
    if hint is bool:
        return st.sampled_from(["true", "false", "yes", "maybe", "1", "[true]"])
    if hint is str:
        return st.one_of(hostile_text.flatmap(yaml_of), paths, numbers)
    return st.one_of(hostile_text.flatmap(yaml_of), numbers)


overrides = st.sampled_from(sorted(FIELDS)).flatmap(
    lambda key: st.one_of(value_for(FIELDS[key]), st.just("[" * 200 + "]" * 200),
                          st.just("{a: " * 80 + "1" + "}" * 80), hostile_text)
    .map(lambda text: f"{key}={text}"))


def digest(root: Path, skip: Path | None = None) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.is_symlink() or not path.is_file():
            out[str(path)] = "other"
        else:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace with a file outside it that a symlink in it points at, and a fake HOME."""
    ws = tmp_path_factory.mktemp("property")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "precious.txt").write_text("keep\n")
    (ws / "link-out").symlink_to(outside)
    (ws / "home").mkdir()
    return ws


def snapshot(ws: Path, skip: Path | None = None) -> dict[str, str]:
    """The workspace and the directory its symlink points out to."""
    return {**digest(ws, skip), **digest((ws / "link-out").resolve())}


def check_one_line(status: Any, err: str) -> None:
    assert status in (0, 2), err
    assert "Traceback" not in err, err
    if status == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("empo"), err


@pytest.mark.slow  # ~35 s: 300 generated overrides
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(override=overrides)
def test_any_override_validates_or_is_one_line(ws, capsys, monkeypatch, override):
    monkeypatch.setenv("HOME", str(ws / "home"))
    before = snapshot(ws)
    try:
        status = main(["config", "validate", str(SMOKE), f"results_dir={ws}/results",
                       override.replace("{ws}", str(ws))])
    except SystemExit as exit_:
        status = exit_.code
    check_one_line(status, capsys.readouterr().err)
    assert snapshot(ws) == before


@pytest.mark.slow  # each example renders the whole graph's scripts
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(override=overrides.filter(lambda o: not o.startswith(("assets=", "results_dir="))))
@example(override="data.emotion_table=~$(touch PWNED)")  # ~user unknown: was a RuntimeError
def test_any_override_dry_runs_or_is_one_line_and_writes_only_its_scripts(tiny, ws, capsys,
                                                                         monkeypatch, override):
    """`empo submit --dry-run` (no SLURM controller) writes only under results/<name>/."""
    monkeypatch.setenv("HOME", str(ws / "home"))
    monkeypatch.setenv("SLURM_CONF", str(ws / "no-cluster.conf"))
    results = ws / "results"
    before = snapshot(ws, skip=results)
    try:
        status = main(["submit", "--dry-run", str(SMOKE), f"results_dir={results}",
                       "cluster.executor=slurm", override.replace("{ws}", str(ws)),
                       "--no-preflight"])
    except SystemExit as exit_:
        status = exit_.code
    out = capsys.readouterr()
    check_one_line(status, out.err)
    assert snapshot(ws, skip=results) == before
    assert not (PROJECT_ROOT / "PWNED").exists() and not (ws / "PWNED").exists()
