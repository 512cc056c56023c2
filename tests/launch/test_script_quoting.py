"""Every generated script, rendered with each string field holding shell syntax, runs nothing but
its intended command (issue 22.3): the sbatch scripts `empo submit` writes (setup line, container
command, srun line), the plain wrappers jobs/*.sbatch and jobs/submit-all.sh, and the sbatch lines
`empo job submit-all --dry-run` prints. Each is executed by bash with stand-ins for srun, sbatch
and empo on PATH that record their arguments; a `$(...)`, backtick or `;` that ran would leave a
flag file. Also `empo submit --dry-run` where SLURM is absent (issue 22.8)."""
from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from empo.cli import main

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SMOKE = PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"
SLURM_COMMANDS = {"srun", "sbatch", "squeue", "sacct", "scancel", "sinfo", "scontrol"}


def hostile(tag: str) -> str:
    """A string that runs `touch` three ways if it ever reaches a shell unquoted (the flag files
    land in the directory bash runs in); spaces and both quote characters break a line that is
    quoted naively."""
    return f"{tag} x$(touch {tag}-dollar)`touch {tag}-tick`;touch {tag}-semi;'\"y"


def recorder(bin_dir: Path, name: str, log: Path) -> None:
    """A stand-in command that appends its argv (JSON) to `log` and succeeds."""
    script = bin_dir / name
    script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"with open({str(log)!r}, 'a') as f:\n"
                      f"    f.write(json.dumps([{name!r}, *sys.argv[1:]]) + '\\n')\n"
                      "print('4242')\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def stand_ins(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(bin dir holding srun, sbatch and empo stand-ins, their argv log, the flag directory)."""
    bin_dir, flags = tmp_path / "bin", tmp_path / "flags"
    bin_dir.mkdir()
    flags.mkdir()
    for name in ("srun", "sbatch", "empo", "apptainer"):
        recorder(bin_dir, name, tmp_path / "calls.jsonl")
    return bin_dir, tmp_path / "calls.jsonl", flags


def run_bash(script: Path | str, bin_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """bash SCRIPT ARGS with the stand-ins first on PATH, in the flag directory."""
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=bin_dir.parent / "flags")


@pytest.mark.parametrize("runtime", ["none", "apptainer", "pyxis"])
def test_every_sbatch_script_runs_only_its_command(tiny, tmp_path, stand_ins, monkeypatch, capsys,
                                                   runtime):
    """The dry run's scripts with every string field hostile, run by bash: srun gets the job's
    command with each hostile value as one word; nothing else runs."""
    bin_dir, log, flags = stand_ins
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "no-cluster.conf"))
    results = tmp_path / hostile("results_dir")
    image = tmp_path / (hostile("image") + ".sif")
    image.write_text("")
    bind = tmp_path / hostile("bind")
    bind.mkdir()
    fields = {"cluster.hf_home": str(tmp_path / hostile("hf_home")),
              "cluster.partition": hostile("partition"),
              "cluster.account": hostile("account"),
              "cluster.mail_user": hostile("mail")}
    overrides = [f"results_dir={json.dumps(str(results))}", "cluster.executor=slurm",
                 *(f"{key}={json.dumps(value)}" for key, value in fields.items())]
    if runtime != "none":
        overrides += [f"cluster.container.runtime={runtime}",
                      f"cluster.container.image={json.dumps(str(image))}",
                      f"cluster.container.binds=[{json.dumps(str(bind))}]"]
    assert main(["submit", "--dry-run", str(SMOKE), *overrides, "--no-preflight"]) == 0, \
        capsys.readouterr().err
    scripts = sorted((results / "smoke" / "dry-run").glob("*.sbatch"))
    assert len(scripts) >= 5
    for script in scripts:
        log.unlink(missing_ok=True)
        done = run_bash(script, bin_dir)
        assert done.returncode == 0, done.stderr
        assert sorted(flags.iterdir()) == [], script.read_text()
        (srun,) = [c for c in calls(log) if c[0] == "srun"]  # exactly the one intended command
        words = srun[1:]
        assert words[-3:] == ["-m", "submitit.core._submit",
                              str(results / "smoke" / "dry-run" / "jobs")], words
        if runtime == "apptainer":
            assert str(image) in words and any(str(bind) in w for w in words), words
        if runtime == "pyxis":
            assert f"--container-image={image}" in words, words
    text = scripts[0].read_text()
    (setup,) = [line for line in text.splitlines() if " HF_HOME=" in line]
    exported = dict(word.split("=", 1) for word in shlex.split(setup)[1:])
    assert exported["HF_HOME"] == fields["cluster.hf_home"], setup  # one word, unchanged


def test_plain_wrappers_pass_hostile_arguments_as_words(tmp_path, stand_ins):
    """jobs/*.sbatch and jobs/submit-all.sh hand every argument to `empo` unchanged."""
    bin_dir, log, flags = stand_ins
    value = hostile("arg")
    for script in sorted((PROJECT_ROOT / "jobs").glob("*.s*")):
        log.unlink(missing_ok=True)
        done = run_bash(script, bin_dir, str(SMOKE), "seed=1", f"cluster.partition={value}")
        assert done.returncode == 0, (script.name, done.stderr)
        assert sorted(flags.iterdir()) == [], script.name
        (empo,) = [c for c in calls(log) if c[0] == "empo"]
        assert empo[-2:] == ["seed=1", f"cluster.partition={value}"] or \
            f"cluster.partition={value}" in empo, (script.name, empo)


def test_printed_sbatch_lines_run_only_sbatch(tiny, tmp_path, stand_ins, capsys):
    """`empo job submit-all --dry-run` prints the sbatch lines it would run; pasted into a shell
    they run sbatch alone, with each hostile value one word."""
    bin_dir, log, flags = stand_ins
    value = hostile("partition")
    status = main(["job", "submit-all", str(SMOKE), f"results_dir={tmp_path / 'results'}",
                   f"cluster.partition={json.dumps(value)}", "--dry-run",
                   "--jobs-dir", str(PROJECT_ROOT / "jobs")])
    out = capsys.readouterr().out
    assert status == 0
    lines = [line for line in out.splitlines() if line.startswith("sbatch ")]
    assert lines
    script = tmp_path / "pasted.sh"
    script.write_text("\n".join(lines) + "\n")
    done = run_bash(script, bin_dir)
    assert done.returncode == 0, done.stderr
    assert sorted(flags.iterdir()) == []
    recorded = [c for c in calls(log) if c[0] == "sbatch"]
    assert len(recorded) == len(lines)
    assert all(f"--partition={value}" in c for c in recorded), recorded[0]


def test_hostile_text_never_reaches_a_script(tmp_path, capsys):
    """Control characters cannot be quoted into a shell word safely: refused at the config."""
    assert main(["config", "validate", str(SMOKE), 'cluster.hf_home="/x\\n/y"']) == 2
    assert "cluster.hf_home: control character" in capsys.readouterr().err


def no_slurm_path(tmp_path: Path) -> str:
    """A PATH with every command of this one except SLURM's (a laptop, a bare login node)."""
    farm = tmp_path / "no-slurm-bin"
    farm.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = farm / entry.name
            if entry.name not in SLURM_COMMANDS and not target.exists():
                target.symlink_to(entry.path)
    return str(farm)


def test_dry_run_without_slurm_writes_the_scripts_and_says_the_check_was_skipped(
        tiny, tmp_path, monkeypatch, capsys):
    """No srun or sbatch on PATH: the scripts are written, sbatch --test-only is reported as
    skipped, no traceback; a second dry run replaces its own scripts and keeps a user's file."""
    monkeypatch.setenv("PATH", no_slurm_path(tmp_path))
    monkeypatch.delenv("SLURM_CONF", raising=False)
    args = ["submit", "--dry-run", str(SMOKE), f"results_dir={tmp_path / 'results'}",
            "cluster.executor=slurm", "--no-preflight"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "sbatch --test-only was skipped" in err and "Traceback" not in err
    out = tmp_path / "results" / "smoke" / "dry-run"
    written = sorted(p.name for p in out.glob("*.sbatch"))
    assert len(written) >= 5
    (out / "99-mine.sbatch").write_text("#!/bin/bash\n")  # not the dry run's: kept
    assert main(args) == 0
    assert sorted(p.name for p in out.glob("*.sbatch")) == sorted([*written, "99-mine.sbatch"])
    assert (out / "99-mine.sbatch").read_text() == "#!/bin/bash\n"
