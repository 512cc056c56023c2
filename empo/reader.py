"""The one bounded reader for files the project did not just write itself: configs a user names
and every file a results directory holds (manifest, stage.json, metrics.json, job logs, locks).

A file is opened without blocking and without following a final symlink where asked, and read only
when it is a regular file (a FIFO, a device such as /dev/zero or a directory is refused before a
byte is read); at most `limit` bytes are read (a log from its end). JSON is parsed with a depth
limit, integers of at most MAX_INT_DIGITS digits and finite numbers only. Errors are one line
naming the file (ReadError, an EmpoError).
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from empo.errors import EmpoError

JSON_LIMIT = 32 << 20         # manifest.json, stage.json, metrics.json
LOG_LIMIT = 1 << 20           # what is read of a job log: its last MiB
JSON_DEPTH = 64
MAX_INT_DIGITS = 30


class ReadError(EmpoError):
    """A file that cannot be read as asked (not a regular file, too large, invalid, too deep)."""


def open_regular(path: Path, follow: bool = True) -> int:
    """A read-only descriptor of the regular file `path` (ReadError for anything else)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if not follow and os.path.islink(path):
            raise ReadError(f"{path}: is a symbolic link; refusing to follow it") from None
        raise ReadError(f"{path}: cannot read ({err.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ReadError(f"{path}: not a regular file (a FIFO, device or directory); refusing "
                        "to read it")
    return fd


def read_bytes(path: Path | str, limit: int, tail: bool = False, follow: bool = True) -> bytes:
    """At most `limit` bytes of the regular file `path`: ReadError when it is larger, or with
    `tail` its last `limit` bytes. `follow=False` refuses a symlink."""
    fd = open_regular(Path(path), follow)
    with os.fdopen(fd, "rb") as handle:
        if tail:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - limit))
            return handle.read(limit)
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ReadError(f"{path}: larger than {limit} bytes; refusing to read it")
    return data


def read_text(path: Path | str, limit: int = LOG_LIMIT, tail: bool = False,
              follow: bool = True, strict: bool = False) -> str:
    """`read_bytes` as UTF-8 text (undecodable bytes replaced unless `strict`)."""
    data = read_bytes(path, limit, tail, follow)
    try:
        return data.decode("utf-8", errors="strict" if strict else "replace")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ReadError(f"{path}:{line}: not UTF-8 text (byte {err.start})") from None


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of the finite range")
    return value


def _small_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(text)} digits (at most {MAX_INT_DIGITS} allowed)")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def loads_json(text: str | bytes, source: str, max_depth: int = JSON_DEPTH) -> Any:
    """json.loads with finite numbers, bounded integers and nesting at most `max_depth`;
    ReadError naming `source` otherwise."""
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_int=_small_int,
                          parse_float=_finite_float)
    except RecursionError:
        raise ReadError(f"{source}: JSON nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise ReadError(f"{source}: not valid JSON ({' '.join(str(err).split())[:200]})") from None
    stack = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise ReadError(f"{source}: JSON nested deeper than {max_depth} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return data


def read_json(path: Path | str, max_bytes: int = JSON_LIMIT, max_depth: int = JSON_DEPTH,
              follow: bool = False) -> Any:
    """A bounded JSON file (see `loads_json`); a symlink is refused unless `follow`."""
    return loads_json(read_bytes(path, max_bytes, follow=follow), str(path), max_depth)


def inside(path: Path | str, root: Path | str) -> bool:
    """Whether `path`, symlinks resolved, lies under the directory `root`."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True
