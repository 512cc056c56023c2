"""The run store (DESIGN §5), the ground floor of data, train, evaluate and launch: paths, atomic
writes, stage markers, locks, JSON merging, output checks, and the guards every write goes
through: an output is never an input, a directory is only rebuilt or removed when it carries the
project's own marker, a stage runs in one process at a time."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from empo.errors import EmpoError
from empo.processes import ProcessId
from empo.reader import ReadError, loads_json, open_regular, read_json, read_text

log = logging.getLogger(__name__)


def run_dir(experiment_dir: Path, variant: str, seed: int) -> Path:
    """results/<experiment>/runs/<variant>/seed-<s>/"""
    return Path(experiment_dir) / "runs" / variant / f"seed-{seed}"


def marker(directory: Path, stage: str = "") -> Path:
    """`DONE` for a run's training stage, `DONE.<stage>` for the others (generate, epitome, ...)."""
    return Path(directory) / (f"DONE.{stage}" if stage else "DONE")


def is_done(directory: Path, stage: str = "") -> bool:
    return marker(directory, stage).exists()


def mark_done(directory: Path, stage: str = "") -> None:
    atomic_write_text(marker(directory, stage), "")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, else remove it."""
    path = Path(path)
    if not path.parent.is_dir():
        raise EmpoError(f"{path}: output directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are shared on a cluster
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:  # a full disk: name the file
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON lines atomically; returns the number of rows."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


class StageBusy(EmpoError):
    """Another process holds the lock of this stage (or experiment): nothing was done."""


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True, what: str = "") -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing, removed on release).

    The holder writes its host and pid into the file. The file is unlinked while still locked;
    a waiter that then gets the lock on the unlinked inode retries on the new file, so two
    processes never both hold it. Non-blocking: StageBusy naming the holder.
    """
    path = Path(path)
    tries = 0
    while True:
        handle = _open_lock(path)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as err:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            tries += 1
            if tries < 5:  # `is_locked` probes hold it for microseconds
                time.sleep(0.1)
                continue
            raise StageBusy(f"{what or path}: already running ({holder}; lock {path}); "
                            "nothing done") from None
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()  # locked a file its last holder had already removed: take the new one
    try:
        handle.seek(0)
        handle.truncate()
        me = ProcessId.of(os.getpid())
        handle.write(f"host {socket.gethostname()} pid {os.getpid()} start "
                     f"{me.start if me else -1} boot {me.boot if me else '-'}\n")
        handle.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _open_lock(path: Path) -> Any:
    """The lock file, created if missing, opened without following a symlink or blocking;
    EmpoError for anything but a regular file (a FIFO or a link put in its place)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise EmpoError(f"{path}: the lock file is a symbolic link; remove it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise EmpoError(f"{path}: the lock file is not a regular file; remove it")
    return os.fdopen(fd, "a+", errors="replace")


def lock_holder(path: Path) -> ProcessId | None:
    """The process a lock file names (`file_lock`'s record), None when it names none validly."""
    try:
        words = read_text(path, limit=4096, follow=False).split()
    except ReadError:
        return None
    fields = dict(zip(words[::2], words[1::2]))
    if len(words) != 8 or not all(fields.get(k, "").lstrip("-").isdigit() for k in ("pid", "start")):
        return None
    return ProcessId.from_record({"host": fields.get("host"), "pid": int(fields["pid"]),
                                  "start": int(fields["start"]), "boot": fields.get("boot")})


def stage_lock(directory: Path, kind: str, key: str) -> contextlib.AbstractContextManager[None]:
    """Held while stage `key` (of `kind`) runs in `directory`; a second process gets StageBusy."""
    return file_lock(Path(directory) / f".{kind}.lock", blocking=False, what=f"stage {key}")


def is_locked(directory: Path, kind: str) -> bool:
    """Whether a process holds the lock of stage `kind` in `directory` now."""
    return lock_held(Path(directory) / f".{kind}.lock")


def lock_held(path: Path) -> bool:
    """Whether a process holds the `file_lock` at `path` now."""
    try:  # without blocking or following a link: a FIFO or symlink placed there is no lock
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


# ----------------------------------------------------------------------------- write guards

OWNER_MARKER = ".empo-owned"


def check_output(path: Path, inputs: Iterable[Path | str | None] = (), what: str = "output"
                 ) -> Path:
    """Refuse, before any work, an output that cannot be written or would touch an input: one
    that is (or is a link to) an input file, lies inside an input directory, is a directory, or
    is in a directory that is missing or not writable."""
    path = Path(path)
    if path.is_dir():
        raise EmpoError(f"{path}: {what} path is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise EmpoError(f"{path}: {what} directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EmpoError(f"{path}: {what} directory {parent} is not writable")
    target = path.resolve()
    for item in inputs:
        if item is None or not Path(item).exists():
            continue
        source = Path(item).resolve()
        inside = source.is_dir() and source in target.parents
        if target == source or (path.exists() and (inside or os.path.samefile(path, item))):
            raise EmpoError(f"{path}: {what} would overwrite the input {item}; "
                            "write it somewhere else")
        if inside:
            raise EmpoError(f"{path}: {what} is inside the input directory {item}; "
                            "write it somewhere else")
    return path


def claim_dir(path: Path, what: str) -> Path:
    """Make `path` a directory the project owns (with OWNER_MARKER): new, empty or already ours.
    A non-empty directory without the marker is refused: it holds someone else's files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EmpoError(f"{path}: {what} must be a directory; a file is there")
    if path.is_dir() and not (path / OWNER_MARKER).exists() and any(path.iterdir()):
        raise EmpoError(f"{path}: not an EmPO {what} directory (it holds other files and no "
                        f"{OWNER_MARKER} marker); name a new or empty directory")
    path.mkdir(parents=True, exist_ok=True)
    if not (path / OWNER_MARKER).exists():
        atomic_write_text(path / OWNER_MARKER, f"created by EmPO as {what}\n")
    return path


# experiment.yaml's first line as EmPO has written it (this version, and before 94032eb): a
# directory holding it is EmPO's results from before the marker, and is marked when next used.
EXPERIMENT_HEADERS = ("# The resolved config of this experiment", "# config hash: ")


def _earlier_results(path: Path) -> bool:
    """Whether `path` holds results EmPO wrote before the marker: an experiment.yaml with EmPO's
    header line, or a run store (runs/<variant>/seed-<s>/ directories and nothing else)."""
    try:
        first = read_text(path / "experiment.yaml", limit=1 << 20, follow=False).split("\n", 1)[0]
        return first.startswith(EXPERIMENT_HEADERS)
    except ReadError:
        pass
    runs = path / "runs"
    if not runs.is_dir() or runs.is_symlink():
        return False
    variants = list(runs.iterdir())
    return bool(variants) and all(
        variant.is_dir() and not variant.is_symlink() and all(
            seed.is_dir() and re.fullmatch(r"seed-[0-9]+", seed.name) for seed in variant.iterdir())
        for variant in variants)


def claim_experiment_dir(path: Path, create: bool = True) -> Path:
    """`claim_dir` for results/<name>: new, empty or EmPO's. Results of an earlier EmPO version
    (no marker, but an experiment.yaml with EmPO's header) are recognised and marked. Without
    `create` only check (nothing is written)."""
    path = Path(path)
    if path.is_symlink():
        raise EmpoError(f"{path}: experiment directory is a symbolic link; name the directory "
                        "itself")
    if not create:
        foreign = path.exists() and not (path / OWNER_MARKER).exists() \
            and not _earlier_results(path) and (not path.is_dir() or any(path.iterdir()))
        if foreign:
            claim_dir(path, "experiment")  # raises, naming the directory
        return path
    if path.is_dir() and not (path / OWNER_MARKER).exists() and _earlier_results(path):
        atomic_write_text(path / OWNER_MARKER, "created by EmPO as experiment (results of an "
                          "earlier version, recognised by experiment.yaml)\n")
    return claim_dir(path, "experiment")


def remove_owned_dir(path: Path) -> None:
    """Delete a directory the project made (it carries OWNER_MARKER); refuse any other."""
    path = Path(path)
    if not (path / OWNER_MARKER).is_file() or path.is_symlink():
        raise EmpoError(f"{path}: refusing to delete a directory EmPO did not create "
                        f"(no {OWNER_MARKER} marker)")
    shutil.rmtree(path)


def merge_json(path: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Merge `metrics` into the JSON object at `path` (other keys kept), atomically and locked
    (metrics.json, stage.json)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise EmpoError(f"{path}: output directory {path.parent} does not exist")
    with file_lock(path.with_name(f".{path.name}.lock")):
        current: dict[str, Any] = {}
        if os.path.lexists(path):
            try:
                current = read_json(path)
                problem = None if isinstance(current, dict) else f"{path}: not a JSON object"
            except ReadError as err:
                problem = str(err)
            if problem:
                move_aside(path, problem)
                log.warning("%s; moved it aside, the stages that wrote it are redone", problem)
                current = {}
        current.update(metrics)
        atomic_write_json(path, current)
    return current


# ----------------------------------------------------------------------------- output checks
# A stage is done when its marker exists *and* its outputs parse: a truncated or corrupted file
# is never taken for a finished result.

def json_object_problem(path: Path, keys: Iterable[str] = ()) -> str | None:
    """Why `path` is not a JSON object holding `keys` (None when it is)."""
    path = Path(path)
    if not os.path.lexists(path):
        return f"{path} is missing"
    try:
        data = read_json(path)
    except ReadError as err:
        return str(err)
    if not isinstance(data, dict):
        return f"{path} is not a JSON object"
    missing = [key for key in keys if key not in data]
    return f"{path} lacks {', '.join(missing)}" if missing else None


def _unchanged_since_checked(check):
    """Cache a passed file check by (path, size, mtime, inode): the graph asks "is it done?" of
    every stage on each status poll, and a 7B adapter or 2,500 predictions need not be re-read
    unless they changed. Only a pass is kept: a problem (which may be a passing read error, e.g.
    no file descriptor left) is checked again on the next poll, never stuck for the process. A
    missing file is never cached."""
    passed: set[tuple[Any, ...]] = set()

    def cached(path: Path, *args: Any) -> str | None:
        try:
            info = os.stat(path)
        except OSError:
            return check(path, *args)
        key = (str(path), info.st_size, info.st_mtime_ns, info.st_ino, *args)
        if key in passed:
            return None
        problem = check(path, *args)
        if problem is None:
            if len(passed) > 4096:
                passed.clear()
            passed.add(key)
        return problem

    cached.__doc__ = check.__doc__
    return cached


@_unchanged_since_checked
def jsonl_problem(path: Path, field: str) -> str | None:
    """Why `path` is not JSON lines of objects with `field` (None when it is)."""
    path = Path(path)
    if not os.path.lexists(path):
        return f"{path} is missing"
    try:
        with os.fdopen(open_regular(path, follow=False), "rb") as handle:
            for number, line in enumerate(handle, 1):
                row = loads_json(line, f"{path}:{number}")
                if not isinstance(row, dict) or field not in row:
                    return f"{path}:{number} has no '{field}'"
    except ReadError as err:
        return str(err)
    return None


@_unchanged_since_checked
def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file (header and sizes; no tensors are read)."""
    path = Path(path)
    try:
        if not os.path.lexists(path):
            return f"{path} is missing"
        with os.fdopen(open_regular(path), "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 2 or 8 + length > size:
                return f"{path} is truncated or not a safetensors file"
            header = loads_json(handle.read(length), str(path))
    except ReadError as err:
        return f"{path} has a corrupt safetensors header ({err})"
    if not isinstance(header, dict):
        return f"{path} has a corrupt safetensors header"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"
            and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2]
    if len(ends) != len([k for k in header if k != "__metadata__"]):
        return f"{path} has a corrupt safetensors header"
    if 8 + length + max(ends, default=0) != size:
        return f"{path} is truncated ({size} bytes; its header describes {8 + length + max(ends, default=0)})"
    return None


def adapter_problem(adapter_dir: Path) -> str | None:
    """Why `adapter_dir` is not a complete peft adapter (config JSON + safetensors weights)."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        return f"{adapter_dir} is missing"
    problem = json_object_problem(adapter_dir / "adapter_config.json")
    if problem:
        return problem
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.exists() and (adapter_dir / "adapter_model.bin").is_file():
        return None  # a torch file from an older peft: read with weights_only=True where used
    return safetensors_problem(weights)


def move_aside(path: Path, why: str, tag: str = "invalid") -> Path | None:
    """Rename an output to `<name>.<tag>-<n>` beside it (never delete), with a `.why` note;
    returns where it went."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    n = 1
    while (target := path.with_name(f"{path.name}.{tag}-{n}")).exists():
        n += 1
    os.replace(path, target)
    (target.parent / f"{target.name}.why").write_text(why + "\n")
    return target
