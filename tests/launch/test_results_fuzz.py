"""A results-directory fuzzer (issue 22): on a copy of a finished smoke run, each file the
commands read (manifest, stage.json, metrics.json, a job log, the run lock) is replaced with
hostile content (a FIFO, a symlink out of the tree, /dev/zero, deep JSON, huge integers, binary,
another host's PID) and `status`, `cancel`, `logs`, `aggregate` and `run` are run under a timer:
never a traceback, never a hang, no foreign file changed, no foreign process signalled, and the
table unchanged where the config's runs are intact. (Also table.md, whose cost footer status
rewrites.)"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from empo.cli import main

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SMOKE = PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"
STAGE = "sft/sft/seed-1"


class Hung(BaseException):
    """A command ran past its time (main catches Exception subclasses, never this)."""


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def hung(signum, frame):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def targets(exp: Path) -> dict[str, Path]:
    """What the commands read, in a finished run."""
    manifest = json.loads((exp / "manifest.json").read_text())
    return {"manifest": exp / "manifest.json",
            "stage.json": exp / "runs" / "sft" / "seed-1" / "stage.json",
            "metrics.json": exp / "runs" / "sft" / "seed-1" / "metrics.json",
            "job log": Path(manifest["jobs"][STAGE]["stderr"]),
            "table.md": exp / "table.md",
            "run lock": exp.with_name(f".{exp.name}.run.lock")}


def hostile(kind: str, path: Path, outside: Path, bystander: int) -> None:
    """Replace `path` with hostile content of `kind`."""
    from empo.processes import ProcessId

    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink out of the tree":
        path.symlink_to(outside)
    elif kind == "/dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "deep JSON":
        path.write_text("[" * 200_000 + "]" * 200_000)
    elif kind == "huge integers":
        path.write_text('{"mmlu": 1' + "0" * 5000 + ', "x": 1' + "0" * 400 + "}")
    elif kind == "binary":
        path.write_bytes(random.Random(0).randbytes(65536))
    elif kind == "another host's PID":
        me = ProcessId.of(bystander).record()
        record = {**me, "host": "login-9"}
        path.write_text(json.dumps({"jobs": {STAGE: {
            "job_id": str(bystander), "executor": "local", "folder": str(path.parent / "jobs"),
            "stderr": str(path.parent / "x.err"), "process": record}}}) if path.suffix == ".json"
            else f"host login-9 pid {bystander} start {me['start']} boot {me['boot']}\n")


KINDS = ["fifo", "symlink out of the tree", "/dev/zero", "deep JSON", "huge integers", "binary",
         "another host's PID"]
NOT_A_FILE = ("fifo", "symlink out of the tree", "/dev/zero")  # a lock there: refused, kept
COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "status": lambda exp: ["status", str(exp), "--json"],
    "cancel": lambda exp: ["cancel", str(exp)],
    "logs": lambda exp: ["logs", str(exp), STAGE, "--err"],
    "aggregate": lambda exp: ["aggregate", str(exp)],
}
# `empo run` is slow (it checks every stage, and may redo one): the cases where it matters
RUN_CASES = {("manifest", "fifo"), ("manifest", "deep JSON"), ("manifest", "another host's PID"),
             ("stage.json", "deep JSON"), ("run lock", "fifo"),
             ("run lock", "symlink out of the tree"), ("run lock", "another host's PID"),
             ("metrics.json", "huge integers")}


@pytest.fixture(scope="module")
def finished(smoke_run) -> Path:
    results, done, _ = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    return results / "smoke"


def copy_of(finished: Path, where: Path) -> Path:
    """The finished experiment at where/smoke, its manifest's paths pointing at the copy."""
    exp = where / "smoke"
    shutil.copytree(finished, exp, symlinks=True)
    manifest = exp / "manifest.json"
    manifest.write_text(manifest.read_text().replace(str(finished), str(exp)))
    return exp


def run_command(argv: list[str], capsys, seconds: int = 60) -> tuple[int, str]:
    with deadline(seconds):
        try:
            status = main(argv)
        except SystemExit as exit_:
            status = exit_.code
    return status, capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("target", ["manifest", "stage.json", "metrics.json", "job log",
                                    "table.md", "run lock"])
def test_hostile_results_files_never_crash_hang_or_harm(finished, tmp_path, capsys, target):
    outside = tmp_path / "outside.txt"
    outside.write_text("a file EmPO did not write\n")
    table = (finished / "table.csv").read_text()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                                  "submitit", "empo"])
    try:
        for kind in KINDS:
            exp = copy_of(finished, tmp_path / kind.replace(" ", "-").replace("/", ""))
            hostile(kind, targets(exp)[target], outside, bystander.pid)
            commands = dict(COMMANDS)
            if (target, kind) in RUN_CASES:
                commands["run"] = lambda exp: ["run", str(SMOKE), f"results_dir={exp.parent}"]
            for name, argv in commands.items():
                status, err = run_command(argv(exp), capsys, 600 if name == "run" else 60)
                where = f"{name} with {target} = {kind}: exit {status}\n{err[-2000:]}"
                assert status in (0, 1, 2), where
                assert "Traceback" not in err, where
                if status == 2:
                    assert len([line for line in err.splitlines() if line.startswith("empo: error")
                                ]) == 1, where
                assert outside.read_text() == "a file EmPO did not write\n", where
                assert bystander.poll() is None, where
                if name in ("aggregate", "run") and target != "metrics.json" and not (
                        target == "run lock" and kind in NOT_A_FILE):
                    assert status == 0, where  # the config's runs are intact
                if (exp / "table.csv").exists() and target != "metrics.json":
                    assert (exp / "table.csv").read_text() == table, where
    finally:
        bystander.kill()
        bystander.wait()
