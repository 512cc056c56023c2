"""Value rules for everything a config or a results directory hands the project: bounded YAML,
text free of control characters, safe names, and the allowed range of every numeric field.

Standard library and PyYAML only (imported by the CLI and the launcher on a login node).
"""
from __future__ import annotations

import math
import re
from argparse import ArgumentTypeError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from empo.errors import ConfigError
from empo.quoting import unsafe_char
from empo.reader import ReadError, read_bytes

MAX_YAML_BYTES = 1 << 20          # a config, profile or experiment.yaml larger than this is refused
MAX_YAML_NODES = 100_000          # after alias expansion (an alias bomb expands to billions)
MAX_YAML_DEPTH = 64
MAX_YAML_INT = 10**30             # larger integers are refused (no field takes one)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
NAME_RULE = ("1-100 characters from A-Z a-z 0-9 . _ + -, starting with a letter or digit")
SBATCH_OPTION = re.compile(r"[a-z][a-z0-9-]{0,63}")
# Fields of free text (in any section) may hold newlines and tabs: they never reach a shell
# script or a file name.
FREE_TEXT_FIELDS = ("system_prompt",)
SEED_LIMIT = 2**32                # numpy/torch seeds: 0 <= seed < 2^32


def read_text(path: Path, what: str = "file", limit: int = MAX_YAML_BYTES) -> str:
    """A UTF-8 text file; ConfigError naming the file for unreadable, oversized or non-UTF-8."""
    path = Path(path)
    try:  # the bounded reader: a FIFO or device is refused without blocking
        data = read_bytes(path, limit)
    except ReadError as err:
        raise ConfigError(f"{err} ({what})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {err.start}); save the {what} "
                          "as UTF-8") from None


def home_path(value: str | Path) -> Path:
    """`value` as a path with a leading `~` or `~user` expanded; ConfigError naming it where that
    home directory is unknown (pathlib raises RuntimeError)."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        raise ConfigError(f"{value}: cannot expand {str(value).split('/', 1)[0]!r}: no such "
                          "user's home directory (name the path without ~)") from None


def load_yaml(text: str, source: str) -> Any:
    """yaml.safe_load, refusing documents that expand past MAX_YAML_NODES (alias bombs) or nest
    deeper than MAX_YAML_DEPTH; errors name `source` and the line."""
    try:
        data = yaml.load(text, Loader=SafeTextDatesLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    except (ValueError, OverflowError) as err:  # an explicit !!timestamp 2001-13-01, ...
        raise ConfigError(f"{source}: invalid YAML value ({' '.join(str(err).split())[:120]})"
                          ) from None
    _check_size(data, source)
    return data


class SafeTextDatesLoader(yaml.SafeLoader):
    """yaml.SafeLoader that leaves unquoted dates and times as text (`data.revision=2001-12-01`
    is a string, as the field is); numbers that look like dates never become datetime objects."""


SafeTextDatesLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _check_size(data: Any, source: str) -> None:
    count = 0
    stack = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_NODES or depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{source}: YAML expands to more than {MAX_YAML_NODES} values or "
                              f"{MAX_YAML_DEPTH} levels (an alias bomb?); write it out plainly")
        if isinstance(node, int) and not isinstance(node, bool) and abs(node) >= MAX_YAML_INT:
            raise ConfigError(f"{source}: integer of {len(str(abs(node)))} digits; at most "
                              f"{len(str(MAX_YAML_INT)) - 1} digits are allowed")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            stack.extend((k, depth + 1) for k in node.keys())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


# sbatch options the launcher sets itself: a job's logs, array, dependencies, name, working
# directory and script are its own (a job log must never be pointed at a user's file).
LAUNCHER_SBATCH_OPTIONS = {
    "output": "the job's stdout log is the launcher's (results/<name>/jobs/...)",
    "error": "the job's stderr log is the launcher's (results/<name>/jobs/...)",
    "input": "jobs read no stdin",
    "open-mode": "the launcher's logs are appended to across requeues",
    "array": "arrays over seeds are planned by the launcher",
    "dependency": "dependencies follow the stage graph (afterok/aftercorr)",
    "kill-on-invalid-dep": "set by the launcher with every dependency",
    "job-name": "jobs are named <experiment>:<stage>:<variant>",
    "chdir": "jobs run where the launcher starts them",
    "workdir": "jobs run where the launcher starts them",
    "wrap": "the job script is the launcher's",
    "parsable": "the launcher reads sbatch's answer itself",
    "comment": "the launcher's record of the job",
    "export": "the job's environment is set by the launcher (cluster.hf_home, cluster.offline)",
    "export-file": "the job's environment is set by the launcher",
    "signal": "set from cluster.signal_lead_s (or the planned checkpoint write: empo plan)",
    "test-only": "empo submit --dry-run runs sbatch --test-only",
}


def sbatch_option_problem(key: str) -> str | None:
    """Why `cluster.slurm_extra` may not set sbatch option `key` (None when it may): one the
    launcher owns, or an abbreviation sbatch would read as one (`out` for `output`)."""
    for option, why in LAUNCHER_SBATCH_OPTIONS.items():
        if option.startswith(key):
            return f"--{option} is set by the launcher: {why}"
    return None


def check_override_text(text: str) -> str:
    """A raw `KEY=VALUE` override, refused before YAML reads it when it holds a control,
    line-separator or bidi character (YAML would fold `gpu\nx` into `gpu x`)."""
    found = unsafe_char(text)
    if found is not None:
        raise ConfigError(f"override {text[:60]!r}: control character {found[1]!r} at position "
                          f"{found[0]}; overrides must be printable text on one line")
    return text


def check_text(value: Any, path: str) -> None:
    """ConfigError if a string in `value` (nested lists/dicts too) holds a control character,
    a line/paragraph separator or a bidi control (`quoting.unsafe_char`; newlines and tabs are
    allowed in FREE_TEXT_FIELDS)."""
    if isinstance(value, str):
        free = path.rsplit(".", 1)[-1] in FREE_TEXT_FIELDS
        found = unsafe_char(value, "\n\t" if free else "")
        if found is not None:
            raise ConfigError(f"{path}: control character {found[1]!r} at position {found[0]} "
                              f"of {value[:40]!r}; config text must be printable")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, f"{path} (key)")
            check_text(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_text(item, f"{path}[{i}]")


def check_name(value: str, key: str) -> str:
    """`value` is a safe name for a directory and a job (no '/', '..', spaces or control chars)."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ConfigError(f"{key}: {value!r} is not a valid name; allowed: {NAME_RULE}")
    return value


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric field: lo <= v <= hi (lo < v when `open_lo`)."""

    lo: float
    hi: float
    open_lo: bool = False

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return (self.lo < value if self.open_lo else self.lo <= value) and value <= self.hi

    def __str__(self) -> str:
        return f"{_num(self.lo)} {'<' if self.open_lo else '<='} value <= {_num(self.hi)}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


BATCH = Range(1, 100_000)
STEPS = Range(1, 10**9)


def field_metadata(cls: type, name: str, key: str) -> Any:
    """`metadata[key]` of field `name` of config dataclass `cls` ("help", "range", "allowed",
    "note"), beside the field, or the base class's where a subclass only changes the default
    (DPOConfig's epochs); None when there is none."""
    for klass in cls.__mro__:
        found = getattr(klass, "__dataclass_fields__", {}).get(name)
        if found is not None and found.metadata.get(key) is not None:
            return found.metadata[key]
    return None


def range_of(cls: type, name: str) -> Range | None:
    """The Range of field `name` of config dataclass `cls` (tests/test_config.py checks that
    every numeric field has one)."""
    return field_metadata(cls, name, "range")


def check_range(cls: type, name: str, value: Any, path: str) -> None:
    """ConfigError naming `path` and the allowed range when a number (or each number of a list
    or mapping field) falls outside it; NaN and infinities are never allowed."""
    rule = range_of(cls, name)
    items = ([(path, item) for item in value] if isinstance(value, list)
             else [(f"{path}.{key}", item) for key, item in value.items()]
             if isinstance(value, dict) else [(path, value)])
    for where, item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{where}: {item!r} is not a finite number")
        if rule is not None and item not in rule:
            raise ConfigError(f"{where}: {item!r} is out of range; allowed: {rule}")


def _int_at_least(text: str, low: int, high: int | None = None, what: str = "an integer") -> int:
    try:
        value = int(text)
    except ValueError:
        raise ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        allowed = f"{low} <= {what} <= {high}" if high is not None else f"{what} >= {low}"
        raise ArgumentTypeError(f"{text} is out of range; allowed: {allowed}")
    return value


def check_positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def check_non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def check_seed(text: str) -> int:
    """argparse type: a seed, 0 <= seed < 2^32."""
    return _int_at_least(text, 0, SEED_LIMIT - 1, "seed")
