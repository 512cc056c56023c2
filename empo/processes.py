"""Which process is which: a process is named by host, boot, PID and its start time (the
kernel's, /proc/PID/stat field 22), recorded when the project starts it. A PID found in a file is
ours only when all four still match the live process, so a reused PID, a process on another host
or after a reboot is never signalled or waited on."""
from __future__ import annotations

import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from empo.reader import inside


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (after the command name), None when there is no such process."""
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return fields if len(fields) > 19 else None


@dataclass(frozen=True)
class ProcessId:
    """A process as recorded when it was started."""

    host: str
    pid: int
    start: int          # clock ticks after boot (/proc/PID/stat field 22)
    boot: str           # /proc/sys/kernel/random/boot_id

    @classmethod
    def of(cls, pid: int) -> "ProcessId | None":
        """The identity of process `pid` on this host now (a zombie too); None if there is none."""
        fields = _stat_fields(pid)
        if fields is None:
            return None
        return cls(socket.gethostname(), int(pid), int(fields[19]), boot_id())

    @classmethod
    def from_record(cls, record: Any) -> "ProcessId | None":
        """From a manifest or lock record ({host, pid, start, boot}); None when malformed."""
        if not isinstance(record, dict):
            return None
        host, pid, start, boot = (record.get(k) for k in ("host", "pid", "start", "boot"))
        if not (isinstance(host, str) and isinstance(boot, str) and type(pid) is int
                and type(start) is int and 0 < pid < 1 << 22 and start >= 0):
            return None
        return cls(host, pid, start, boot)

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def alive(self) -> bool:
        """Whether this very process still runs here (same host, boot, PID, start; no zombie)."""
        if self.host != socket.gethostname() or self.boot != boot_id():
            return False
        fields = _stat_fields(self.pid)
        return fields is not None and fields[0] != "Z" and int(fields[19]) == self.start

    def cmdline(self) -> list[str]:
        """Its command line (empty when it is gone)."""
        try:
            raw = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return []
        return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def ended(pid: int) -> bool:
    """Whether process `pid` is gone or a zombie."""
    fields = _stat_fields(pid)
    return fields is None or fields[0] == "Z"


def owned_job(entry: Any, experiment_dir: Path) -> ProcessId | None:
    """The live local job (submitit controller) a manifest entry names, when it is ours: the
    entry's recorded identity (`process`: host, boot, PID, start time) matches the live process,
    its job folder lies inside `experiment_dir`, and the process runs that folder. Else None."""
    if not isinstance(entry, dict):
        return None
    process = ProcessId.from_record(entry.get("process"))
    folder = entry.get("folder")
    if process is None or not isinstance(folder, str) or str(process.pid) != entry.get("job_id") \
            or not inside(folder, experiment_dir) or not process.alive():
        return None
    command = process.cmdline()
    resolved = str(Path(folder).resolve())
    if not any("submitit" in word for word in command) or \
            not any(word in (folder, resolved) for word in command):
        return None
    return process
