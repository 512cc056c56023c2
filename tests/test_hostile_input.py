"""Hostile input, table-driven: every command given input that once destroyed files, ran code,
hung or crashed answers with exit 2 and one line naming the file/key at fault, and changes no
file (the workspace is hashed before and after). Issue 9's reproductions are among the cases."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from empo.cli import main

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SMOKE = PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"
EMPO_HEADER = "# The resolved config of this experiment, as last run.\n"
RAW_HEADER = "conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags\n"
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi"))


class Pwned:
    """A pickle that runs code when loaded: it must never be."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace: raw ED (a copy of the tiny corpus's layout), a thesis, configs, a results
    directory crafted by an attacker, predictions, a read-only nothing: everything is hashed."""
    from empo.data.synthetic import write_ed_corpus

    write_ed_corpus(tmp_path / "ed", per_emotion={"train": 1, "valid": 1, "test": 1}, seed=0)
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "a.tex").write_text("\\section{x}\n")
    (tmp_path / "header_only").mkdir()
    for split in ("train", "valid", "test"):
        (tmp_path / "header_only" / f"{split}.csv").write_text(RAW_HEADER)
    (tmp_path / "preds.jsonl").write_text(json.dumps(
        {"conv_id": "1", "emotion": "joyful", "seeker": "hi", "prompt": [], "reference": "yo",
         "prediction": "hey"}) + "\n")
    (tmp_path / "bomb.yaml").write_text(f"name: x\nsft:\n  trainer_args:\n    {BOMB.replace(chr(10), chr(10) + '    ')}\n")
    (tmp_path / "bomb_extra.yaml").write_text(
        f"name: x\ncluster:\n  slurm_extra:\n    {BOMB.replace(chr(10), chr(10) + '    ')}\n")
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (tmp_path / "latin1_profile.yaml").write_bytes("partition: caf\xe9\n".encode("latin-1"))
    (tmp_path / "with_profile.yaml").write_text(
        f"name: x\ncluster:\n  profile: {tmp_path / 'latin1_profile.yaml'}\n")
    (tmp_path / "list.yaml").write_text("- name\n- x\n")
    (tmp_path / "pth").mkdir()
    for aspect in ("ER", "EX", "IP"):  # empty files where torch checkpoints belong
        (tmp_path / "pth" / f"finetuned_{aspect}.pth").write_bytes(b"")
    (tmp_path / "bidi.yaml").write_text("name: x\ndata:\n  source: /tmp/a\u202eb.csv\n")
    (tmp_path / "arch_list.json").write_text("[1, 2]")
    (tmp_path / "latin1.csv").write_bytes("variant,n\nbas\xe9,1\n".encode("latin-1"))
    (tmp_path / "latin1.tsv").write_bytes("emotion\topposite\ncaf\xe9\tx\n".encode("latin-1"))
    _crafted_results(tmp_path)
    return tmp_path


def _crafted_results(root: Path) -> None:
    """results/evil: a results directory whose manifest points at a code-running pickle."""
    exp = root / "results" / "evil"
    jobs = exp / "jobs"
    jobs.mkdir(parents=True)
    (exp / "experiment.yaml").write_text(
        EMPO_HEADER + SMOKE.read_text().replace("name: smoke", "name: evil")
        .replace("results_dir: results", f"results_dir: {root}/results")
        .replace("assets/tiny", f"{PROJECT_ROOT}/assets/tiny"))
    for name in ("evil", "badshape", "inject"):  # EmPO's (marked): only their content is hostile
        (root / "results" / name).mkdir(exist_ok=True)
        (root / "results" / name / ".empo-owned").write_text("")
    with open(jobs / "4242_0_result.pkl", "wb") as handle:
        pickle.dump(Pwned(root.parent / f"{root.name}-PWNED"), handle)
    manifest = {"jobs": {"sft/sft/seed-1": {"job_id": "4242", "executor": "local",
                                            "folder": str(jobs), "stderr": "x"}}}
    (exp / "manifest.json").write_text(json.dumps(manifest))
    _hostile_results(root, exp)
    bad = root / "results" / "badshape"
    (bad / "experiment.yaml").write_text((exp / "experiment.yaml").read_text()
                                         .replace("name: evil", "name: badshape"))
    (bad / "manifest.json").write_text(json.dumps({"jobs": ["sft"]}))
    inject = root / "results" / "inject"
    (inject / "experiment.yaml").write_text((exp / "experiment.yaml").read_text()
                                            .replace("name: evil", "name: inject"))
    (inject / "manifest.json").write_text(json.dumps({"jobs": {"aggregate": {
        "job_id": "--help; touch PWNED", "executor": "slurm"}}}))


def _hostile_results(root: Path, evil: Path) -> None:
    """Results directories whose files are hostile to a reader (issue 22.4-5): a FIFO manifest,
    deep JSON, a log path out of the tree, huge integers in metrics; and a foreign directory."""
    def experiment(name: str) -> Path:
        exp = root / "results" / name
        exp.mkdir(parents=True)
        (exp / "experiment.yaml").write_text((evil / "experiment.yaml").read_text()
                                             .replace("name: evil", f"name: {name}"))
        (exp / ".empo-owned").write_text("")
        return exp

    os.mkfifo(experiment("fifo") / "manifest.json")
    (experiment("deep") / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    for name, stderr in (("passwd", "/etc/passwd"), ("zero", "/dev/zero")):
        (experiment(name) / "manifest.json").write_text(json.dumps({"jobs": {"sft/sft/seed-1": {
            "job_id": "4242", "executor": "local", "state": "FAILED", "stderr": stderr,
            "stdout": stderr}}}))
    logfifo = experiment("logfifo")
    os.mkfifo(logfifo / "err.log")
    (logfifo / "manifest.json").write_text(json.dumps({"jobs": {"sft/sft/seed-1": {
        "job_id": "4242", "executor": "local", "state": "FAILED",
        "stderr": str(logfifo / "err.log"), "stdout": str(logfifo / "err.log")}}}))
    for name, text in (("hugeint", '{"epitome_diff": 1' + "0" * 5000 + "}"),
                       ("overflow", '{"epitome_diff": 1' + "0" * 400 + "}")):
        run = experiment(name) / "runs" / "baseline" / "seed-1"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(text)
    foreign = root / "results" / "foreign"
    foreign.mkdir()
    (foreign / "experiment.yaml").write_text("my own notes: keep\n")
    (foreign / "dry-run").mkdir()
    (foreign / "dry-run" / "mine.sbatch").write_text("#!/bin/bash\n")
    os.mkfifo(root / "fifo.yaml")
    os.mkfifo(root / "fifo.csv")


def tree_digest(root: Path) -> dict[str, str]:
    """path -> sha256 of every file under `root` (directories as 'dir', FIFOs as 'fifo')."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = ("dir" if path.is_dir() else "fifo" if path.is_fifo()
                    else hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@dataclass
class Case:
    """argv (with {ws} for the workspace) -> exit status 2 and a message holding `says`."""

    id: str
    argv: list[str]
    says: str
    status: int = 2
    setup: Callable[[Path], None] | None = None
    extra: list[str] = field(default_factory=list)


def smoke(*overrides: str) -> list[str]:
    return [str(SMOKE), "results_dir={ws}/results", *overrides]


CASES = [
    # 1. assets: a directory the project did not make is never deleted or written into
    Case("plan-assets-foreign-dir", ["plan", *smoke("assets={ws}")], "not an EmPO tiny assets"),
    Case("plan-assets-thesis", ["plan", *smoke("assets={ws}/thesis")], "not an EmPO tiny assets"),
    Case("assets-tiny-out-foreign", ["assets", "tiny", "--out", "{ws}/thesis"], "not an EmPO tiny"),
    Case("run-assets-foreign", ["run", *smoke("assets={ws}/thesis")], "not an EmPO tiny assets"),
    Case("train-assets-foreign", ["train", "sft", *smoke("assets={ws}/thesis"), "--seed", "1"],
         "not an EmPO tiny assets"),
    # 2. an export never replaces its input
    Case("data-sft-over-input", ["data", "sft", "--source", "{ws}/ed", "--out",
                                 "{ws}/ed/train.csv"], "would overwrite the input"),
    Case("data-eval-over-input", ["data", "eval", "--source", "{ws}/ed", "--out",
                                  "{ws}/ed/test.csv"], "would overwrite the input"),
    Case("data-preference-over-input", ["data", "preference", "--source", "{ws}/ed", "--out",
                                        "{ws}/ed/train.csv"], "would overwrite the input"),
    Case("data-preference-over-table", ["data", "preference", "--source", "{ws}/ed", "--table",
                                        "{ws}/latin1.tsv", "--out", "{ws}/latin1.tsv"],
         "would overwrite the input"),
    Case("eval-bertscore-over-input", ["eval", "bertscore", "--input", "{ws}/preds.jsonl",
                                       "--model", "x", "--out", "{ws}/preds.jsonl"],
         "would overwrite the input"),
    Case("eval-epitome-over-input", ["eval", "epitome", "--input", "{ws}/preds.jsonl",
                                     "--checkpoints", "x", "--out", "{ws}/preds.jsonl"],
         "would overwrite the input"),
    Case("data-sft-inside-input-dir", ["data", "sft", "--source", "{ws}/ed", "--out",
                                       "{ws}/ed/new.jsonl"], "is inside the input directory"),
    Case("eval-out-is-a-directory", ["eval", "bertscore", "--input", "{ws}/preds.jsonl",
                                     "--model", "x", "--out", "{ws}/thesis"], "is a directory"),
    # 3. no control characters in config text (they would end an #SBATCH line)
    Case("name-newline", ["config", "validate", *smoke('name="x\\ntouch ~/p #"')],
         "name: control character"),
    Case("partition-newline", ["config", "validate", *smoke('cluster.partition="gpu\\nid"')],
         "cluster.partition: control character"),
    Case("account-newline", ["config", "validate", *smoke('cluster.account="a\\rb"')],
         "cluster.account: control character"),
    Case("qos-newline", ["config", "validate", *smoke('cluster.qos="q\\n#"')],
         "cluster.qos: control character"),
    Case("slurm-extra-value-newline", ["config", "validate",
                                       *smoke('cluster.slurm_extra={constraint: "a\\nrm x"}')],
         "cluster.slurm_extra.constraint: control character"),
    Case("slurm-extra-key-newline", ["config", "validate",
                                     *smoke('cluster.slurm_extra={"a\\nb": 1}')],
         "control character"),
    Case("slurm-extra-key-not-an-option", ["config", "validate",
                                           *smoke("cluster.slurm_extra={'x y': 1}")],
         "not an sbatch long option name"),
    Case("image-escape", ["config", "validate", *smoke('cluster.container.image="a\\x1b[2J"')],
         "cluster.container.image: control character"),
    # 5. names are safe directory and job names
    Case("name-empty", ["config", "validate", *smoke("name=")], "name: '' is not a valid name"),
    Case("name-parent", ["config", "validate", *smoke("name=../x")], "name: '../x' is not a valid"),
    Case("name-absolute", ["run", *smoke("name=/tmp/x")], "name: '/tmp/x' is not a valid name"),
    Case("name-force-new-empty", ["run", *smoke("name="), "--force-new"], "is not a valid name"),
    # 4. nothing named by a results directory is unpickled; its job ids are checked
    Case("status-manifest-shape", ["status", "{ws}/results/badshape"],
         "'jobs' must be an object"),
    Case("cancel-manifest-shape", ["cancel", "{ws}/results/badshape"],
         "'jobs' must be an object"),
    Case("status-job-id-injection", ["status", "{ws}/results/inject"],
         "is not a slurm job id"),
    Case("cancel-job-id-injection", ["cancel", "{ws}/results/inject"], "is not a slurm job id"),
    # 9. values that pass types but do harm
    Case("epochs-zero", ["config", "validate", *smoke("sft.num_train_epochs=0")],
         "sft.num_train_epochs: 0 is out of range; allowed: 1 <= value"),
    Case("max-eval-negative", ["config", "validate", *smoke("data.max_eval_examples=-1")],
         "data.max_eval_examples: -1 is out of range"),
    Case("lr-inf", ["config", "validate", *smoke("dpo.learning_rate=.inf")],
         "dpo.learning_rate: inf is not a finite number"),
    Case("lr-nan", ["config", "validate", *smoke("sft.learning_rate=.nan")],
         "sft.learning_rate: nan is not a finite number"),
    Case("max-new-tokens-negative", ["config", "validate",
                                     *smoke("eval.generation.max_new_tokens=-1")],
         "eval.generation.max_new_tokens: -1 is out of range"),
    Case("lora-r-huge", ["config", "validate", *smoke("lora.r=100000000000000000000000")],
         "lora.r: 100000000000000000000000 is out of range"),
    Case("seed-negative", ["config", "validate", *smoke("seeds=[-1]")], "seeds: -1 is out of range"),
    Case("seed-too-large", ["config", "validate", *smoke("seeds=[4294967296]")],
         "seeds: 4294967296 is out of range"),
    Case("top-p-zero", ["config", "validate", *smoke("eval.generation.top_p=0")],
         "eval.generation.top_p: 0.0 is out of range; allowed: 0 < value <= 1"),
    Case("time-zero", ["config", "validate", *smoke("cluster.time={sft: 0}")],
         "cluster.time.sft: 0 is out of range"),
    Case("parallel-negative", ["run", *smoke(), "--parallel", "-1"], "--parallel: -1 is out of range"),
    Case("preference-epochs-huge", ["data", "preference", "--source", "{ws}/ed", "--out",
                                    "{ws}/p.jsonl", "--epochs", "100000000"],
         "epochs: 100000000 is out of range"),
    Case("preference-seed-negative", ["data", "preference", "--source", "{ws}/ed", "--out",
                                      "{ws}/p.jsonl", "--seed", "-4"], "--seed: -4 is out of range"),
    Case("train-seed-too-large", ["train", "sft", *smoke(), "--seed", "4294967296"],
         "--seed: 4294967296 is out of range"),
    Case("mmlu-limit-zero", ["eval", "mmlu", "--model", "x", "--tasks", "mmlu", "--limit", "0",
                             "--out", "{ws}/m.json"], "eval.mmlu.limit: 0 is out of range"),
    # 10. YAML alias bombs are refused, fast
    Case("alias-bomb-trainer-args", ["config", "validate", "{ws}/bomb.yaml"], "alias bomb"),
    Case("alias-bomb-slurm-extra", ["config", "validate", "{ws}/bomb_extra.yaml"], "alias bomb"),
    Case("alias-bomb-override", ["config", "validate", *smoke(
        "sft.trainer_args={a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
        "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
        "e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}")], "alias bomb"),
    # 11. one line, exit 2, instead of tracebacks
    Case("yaml-not-utf8", ["config", "validate", "{ws}/latin1.yaml"], "latin1.yaml:1: not UTF-8"),
    Case("profile-not-utf8", ["config", "validate", "{ws}/with_profile.yaml"],
         "latin1_profile.yaml:1: not UTF-8"),
    Case("yaml-top-level-list", ["config", "validate", "{ws}/list.yaml"],
         "expected a mapping at the top level"),
    Case("yaml-missing", ["config", "validate", "{ws}/nope.yaml"], "nope.yaml: cannot read"),
    Case("architecture-json-list", ["plan", *smoke("model.architecture={ws}/arch_list.json")],
         "arch_list.json: the model config must be a JSON object"),
    Case("compare-not-utf8", ["aggregate", "{ws}/results/evil", "--compare", "{ws}/latin1.csv"],
         "latin1.csv:2: not UTF-8 text"),
    Case("table-not-utf8", ["data", "preference", "--source", "{ws}/ed", "--out",
                            "{ws}/p.jsonl", "--table", "{ws}/latin1.tsv"], "latin1.tsv"),
    Case("header-only-source", ["data", "sft", "--source", "{ws}/header_only", "--out",
                                "{ws}/sft.jsonl"], "no eligible dialogues"),
    Case("export-dir-missing", ["data", "sft", "--source", "{ws}/ed", "--out",
                                "{ws}/nowhere/sft.jsonl"], "does not exist"),
    Case("status-not-results", ["status", "{ws}/thesis"], "no experiment.yaml"),
    Case("unknown-option", ["data", "sft", "--source", "{ws}/ed", "--out", "{ws}/s.jsonl",
                            "--bogus"],
         "unrecognized arguments: --bogus"),
    Case("eval-epitome-empty-pth", ["eval", "epitome", "--input", "{ws}/preds.jsonl",
                                    "--checkpoints", "{ws}/pth", "--encoder",
                                    f"{PROJECT_ROOT}/assets/tiny/epitome/encoder", "--out",
                                    "{ws}/m.json"],
         "finetuned_ER.pth: not a torch checkpoint (empty or truncated"),
    # issue 22.1: a directory the project did not create is never written into, moved or cleaned
    Case("run-into-foreign-dir", ["run", *smoke("results_dir={ws}", "name=thesis")],
         "thesis: not an EmPO experiment directory"),
    Case("train-into-foreign-dir", ["train", "sft", *smoke("results_dir={ws}", "name=thesis"),
                                    "--seed", "1"], "thesis: not an EmPO experiment directory"),
    Case("run-force-new-foreign-dir", ["run", *smoke("results_dir={ws}", "name=thesis"),
                                       "--force-new"], "not an EmPO experiment directory"),
    Case("run-force-new-source-tree", ["run", *smoke(f"results_dir={PROJECT_ROOT}", "name=empo"),
                                       "--force-new"], "empo: not an EmPO experiment directory"),
    Case("dry-run-foreign-dir", ["submit", *smoke("name=foreign"), "--dry-run"],
         "foreign: not an EmPO experiment directory"),
    Case("aggregate-foreign-dir", ["aggregate", "{ws}/thesis"], "not an EmPO experiment"),
    # issue 22.3: the launcher's own sbatch options are refused, with the reason
    Case("slurm-extra-output", ["config", "validate",
                                *smoke("cluster.slurm_extra={output: /home/u/.bashrc}")],
         "cluster.slurm_extra.output: not settable (--output is set by the launcher"),
    Case("slurm-extra-abbreviation", ["config", "validate",
                                      *smoke("cluster.slurm_extra={err: x}")],
         "--error is set by the launcher"),
    Case("slurm-extra-wrap", ["config", "validate", *smoke("cluster.slurm_extra={wrap: id}")],
         "--wrap is set by the launcher"),
    # issue 22.4: files a results directory names and paths a user gives: regular files only
    Case("validate-fifo", ["config", "validate", "{ws}/fifo.yaml"], "fifo.yaml: not a regular"),
    Case("status-fifo-manifest", ["status", "{ws}/results/fifo"], "manifest.json: not a regular"),
    Case("cancel-fifo-manifest", ["cancel", "{ws}/results/fifo"], "manifest.json: not a regular"),
    Case("logs-fifo-log", ["logs", "{ws}/results/logfifo", "sft/sft/seed-1", "--err"],
         "err.log: not a regular file"),
    Case("logs-etc-passwd", ["logs", "{ws}/results/passwd", "sft/sft/seed-1"],
         "the manifest names the log /etc/passwd, outside"),
    Case("logs-dev-zero", ["logs", "{ws}/results/zero", "sft/sft/seed-1", "--err"],
         "the manifest names the log /dev/zero, outside"),
    Case("compare-fifo", ["aggregate", "{ws}/results/evil", "--compare", "{ws}/fifo.csv"],
         "fifo.csv: not a regular file"),
    # issue 22.5: parse limits
    Case("status-deep-manifest", ["status", "{ws}/results/deep"], "JSON nested deeper than"),
    Case("aggregate-huge-int", ["aggregate", "{ws}/results/hugeint"], "integer of 5001 digits"),
    Case("aggregate-overflow", ["aggregate", "{ws}/results/overflow"], "integer of 401 digits"),
    Case("override-huge-int", ["config", "validate", *smoke("lora.r=1" + "0" * 400)],
         "integer of 401 digits"),
    Case("override-5000-digits", ["config", "validate", *smoke("lora.r=" + "9" * 5000)],
         "invalid YAML value"),
    Case("override-bad-date", ["config", "validate", *smoke("data.revision=!!timestamp 2001-13-01")],
         "invalid YAML value (month must be in 1..12)"),
    # issue 22.9: control characters in the raw override text, bidi overrides in paths
    Case("override-raw-newline", ["config", "validate", *smoke("cluster.partition=gpu\nx")],
         "control character '\\n'"),
    Case("path-bidi-override", ["config", "validate", *smoke("data.source=/tmp/a\u202eb")],
         "override 'data.source=/tmp/a\\u202eb': control character '\\u202e'"),
    Case("path-bidi-in-file", ["config", "validate", "{ws}/bidi.yaml"],
         "data.source: control character '\\u202e'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_in_one_line_and_changes_nothing(case, ws, capsys):
    argv = [a.replace("{ws}", str(ws)) for a in case.argv]
    if case.setup is not None:
        case.setup(ws)
    before = tree_digest(ws)
    project_before = tree_digest(PROJECT_ROOT / "configs")
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse usage errors
        status = exit_.code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == case.status, (out, err)
    assert len(lines) == 1 and case.says in lines[0], err
    assert "Traceback" not in err
    assert tree_digest(ws) == before
    assert tree_digest(PROJECT_ROOT / "configs") == project_before
    assert not (ws.parent / f"{ws.name}-PWNED").exists()


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_command_without_arguments_names_only_what_is_missing(command, capsys):
    """`empo run` alone asks for CONFIG, not for the optional KEY=VALUE overrides (22.9)."""
    with pytest.raises(SystemExit) as exit_:
        main([command])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "required: config (" in err and "KEY=VALUE" not in err


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


def test_status_and_cancel_never_unpickle_what_a_manifest_names(ws, capsys):
    """results/evil names a local job whose result pickle runs code: status and cancel read the
    job's state from its process and the markers, never from that file."""
    flag = ws.parent / f"{ws.name}-PWNED"
    assert main(["status", str(ws / "results" / "evil"), "--json"]) == 0
    states = {s["key"]: s["state"] for s in json.loads(capsys.readouterr().out)}
    assert states["sft/sft/seed-1"] == "failed"  # no such process, no DONE marker
    assert main(["cancel", str(ws / "results" / "evil")]) == 0
    assert not flag.exists()


def test_overrides_may_follow_options(capsys):
    """`--stage sft lora.r=8`: overrides after an option are overrides, not an error."""
    assert main(["config", "show", str(SMOKE), "lora.r=8"]) == 0
    capsys.readouterr()
    tiny = PROJECT_ROOT / "assets" / "tiny"
    if not (tiny / "COMPLETE").exists():
        pytest.skip("the tiny assets are built by other tests")
    assert main(["plan", str(SMOKE), "--stage", "dpo", "lora.r=8"]) == 0
    assert "lora" in capsys.readouterr().out.lower()


def test_assets_are_rebuilt_only_in_a_directory_the_project_marked(tmp_path):
    """An incomplete build of ours is redone; a foreign directory is refused, never deleted."""
    from empo.assets import ensure_tiny_assets
    from empo.errors import EmpoError
    from empo.store import OWNER_MARKER, claim_dir, remove_owned_dir

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(EmpoError, match="not an EmPO tiny assets directory"):
        ensure_tiny_assets(foreign)
    with pytest.raises(EmpoError, match="did not create"):
        remove_owned_dir(foreign)
    assert (foreign / "keep.txt").read_text() == "x"
    ours = claim_dir(tmp_path / "ours", "tiny assets")
    assert (ours / OWNER_MARKER).exists()
    (ours / "half-written").write_text("")
    remove_owned_dir(ours)
    assert not ours.exists()


@pytest.mark.skipif(os.geteuid() != 0 or subprocess.run(["which", "mount"],
                    capture_output=True).returncode != 0, reason="needs root to mount a ro tmpfs")
def test_an_output_in_a_read_only_directory_fails_before_any_work(tmp_path, capsys):
    """A read-only file system (root ignores permission bits): refused before a model loads."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (tmp_path / "p.jsonl").write_text(json.dumps({"prediction": "x", "reference": "y"}) + "\n")
        status = main(["eval", "bertscore", "--input", str(tmp_path / "p.jsonl"), "--model",
                       "does-not-exist", "--out", str(ro / "metrics.json")])
        err = capsys.readouterr().err
        assert status == 2 and "is not writable" in err and "Traceback" not in err
    finally:
        subprocess.run(["umount", str(ro)], check=False)


# ----------------------------------------------------------------------------- issue 22.2, 22.7
# Processes the project did not start: a PID named by a manifest or a run lock is ours only when
# host, boot, PID, start time and the experiment (its job folder) all match the live process.

def _bystander(*words: str) -> subprocess.Popen:
    """A process the project did not start; `words` end up in its command line."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *words])


def _name_in_manifest(exp: Path, pid: int, folder: Path, process: dict | None) -> None:
    entry = {"job_id": str(pid), "executor": "local", "folder": str(folder),
             "stderr": str(folder / "x.err")}
    if process is not None:
        entry["process"] = process
    (exp / "manifest.json").write_text(json.dumps({"jobs": {"sft/sft/seed-1": entry}}))


def _gone(proc: subprocess.Popen, within_s: float = 20.0) -> bool:
    try:
        proc.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        return False
    return True


@pytest.mark.parametrize("forgery", ["another-host", "another-start-time", "no-record",
                                     "another-experiment"])
def test_status_and_cancel_never_take_a_process_they_did_not_start(ws, capsys, forgery):
    """A live process whose command line even looks like the job's is reported as not running
    and never signalled unless its recorded identity and job folder match."""
    from empo.processes import ProcessId

    exp = ws / "results" / "evil"
    folder = ws / "elsewhere" if forgery == "another-experiment" else exp / "jobs"
    folder.mkdir(exist_ok=True)
    victim = _bystander("submitit", str(folder))
    try:
        me = ProcessId.of(victim.pid).record()
        record = {"another-host": {**me, "host": "login-9"},
                  "another-start-time": {**me, "start": me["start"] + 1},
                  "no-record": None, "another-experiment": me}[forgery]
        _name_in_manifest(exp, victim.pid, folder, record)
        assert main(["status", str(exp), "--json"]) == 0
        states = {s["key"]: s["state"] for s in json.loads(capsys.readouterr().out)}
        assert states["sft/sft/seed-1"] == "failed"
        assert main(["cancel", str(exp)]) == 0
        assert not _gone(victim, within_s=1.0)
    finally:
        victim.kill()
        victim.wait()


def test_cancel_stops_a_job_it_did_start(ws, capsys):
    """The control: the same process, recorded as the job was started, is running and stopped."""
    from empo.processes import ProcessId

    exp = ws / "results" / "evil"
    victim = _bystander("submitit", str(exp / "jobs"))
    try:
        _name_in_manifest(exp, victim.pid, exp / "jobs", ProcessId.of(victim.pid).record())
        assert main(["status", str(exp), "--json"]) == 0
        states = {s["key"]: s["state"] for s in json.loads(capsys.readouterr().out)}
        assert states["sft/sft/seed-1"] == "running"
        assert main(["cancel", str(exp)]) == 0
        assert _gone(victim)
    finally:
        victim.kill()
        victim.wait()


def _write_lock(lock: Path, pid: int) -> None:
    from empo.processes import ProcessId

    me = ProcessId.of(pid)
    lock.write_text(f"host {me.host} pid {me.pid} start {me.start} boot {me.boot}\n")


def test_cancel_never_signals_the_pid_of_a_stale_run_lock(ws):
    """A stale run lock (its driver was killed) whose PID now names another empo process: the
    identity matches nothing that holds the lock, so nothing is signalled."""
    exp = ws / "results" / "evil"
    victim = _bystander("empo", "run", "other.yaml")
    try:
        _write_lock(exp.with_name(".evil.run.lock"), victim.pid)
        assert main(["cancel", str(exp)]) == 0
        (exp.with_name(".evil.run.lock")).write_text(f"host {socket.gethostname()} pid "
                                                     f"{victim.pid}\n")  # an older lock format
        assert main(["cancel", str(exp)]) == 0
        assert not _gone(victim, within_s=1.0)
    finally:
        victim.kill()
        victim.wait()


def test_cancel_stops_the_driver_that_holds_the_run_lock(ws):
    """The control: the process that holds the lock and matches its record gets SIGTERM."""
    lock = ws / "results" / ".evil.run.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)",
         str(lock), "empo"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        _write_lock(lock, holder.pid)
        assert main(["cancel", str(ws / "results" / "evil")]) == 0
        assert _gone(holder)
    finally:
        holder.kill()
        holder.wait()


def test_run_waits_only_for_its_own_jobs_and_counts_them_against_parallel(ws):
    """`empo run` after a SIGKILL adopts the earlier driver's live job only when it is ours, and
    that job counts against --parallel (issue 22.7): with --parallel 1 nothing else starts."""
    from empo.commands.launch import _experiment
    from empo.launch.jobs import plan_units
    from empo.launch.run import _adopt_live_jobs, _Job, _start_ready
    from empo.processes import ProcessId

    exp = ws / "results" / "evil"
    cfg, graph = _experiment(exp)
    victim = _bystander("submitit", str(exp / "jobs"))
    try:
        for record, adopted in ((None, False), (ProcessId.of(victim.pid).record(), True)):
            _name_in_manifest(exp, victim.pid, exp / "jobs", record)
            jobs = {unit.key: _Job(unit) for unit in plan_units(graph)}
            _adopt_live_jobs(cfg, jobs, [])
            states = [j.state for j in jobs.values()]
            assert ("elsewhere" in states) == adopted
        started: list[str] = []
        _start_ready(cfg, "local", exp / "jobs" / "new", jobs, 1, [], started.append)
        assert started == [] and not any(j.state == "running" for j in jobs.values())
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.skipif(os.geteuid() != 0 or subprocess.run(["which", "mount"],
                    capture_output=True).returncode != 0, reason="needs root to mount a tmpfs")
def test_a_full_disk_names_the_file(ws, capsys):
    """ENOSPC while writing an output: one line naming the file, not a bare `[Errno 28]`, and no
    partial file left (issue 22.9)."""
    full = ws.parent / f"{ws.name}-full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(full)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        status = main(["data", "sft", "--source", str(ws / "ed"), "--out", str(full / "s.jsonl")])
        err = capsys.readouterr().err
        assert status == 2 and f"{full / 's.jsonl'}: No space left on device" in err, err
        assert "Traceback" not in err and list(full.iterdir()) == []
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_results_of_earlier_versions_are_recognised_and_marked(ws, capsys):
    """An experiment directory written before the marker existed (its experiment.yaml starts
    with EmPO's header, as versions since the first wrote it) is EmPO's: status works and marks
    it; the same directory with a foreign experiment.yaml is refused and left as it is."""
    from empo.store import OWNER_MARKER

    old = ws / "results" / "old"
    old.mkdir()
    text = (ws / "results" / "evil" / "experiment.yaml").read_text().replace(EMPO_HEADER, "")
    (old / "experiment.yaml").write_text("# config hash: 0123abcd\n" + text.replace(
        "name: evil", "name: old"))
    (old / "runs" / "baseline" / "seed-1").mkdir(parents=True)
    assert main(["status", str(old)]) == 0  # recognised; reading commands write no marker
    assert not (old / OWNER_MARKER).exists()
    assert main(["submit", "--dry-run", str(SMOKE), f"results_dir={ws / 'results'}", "name=old",
                 "--no-preflight"]) == 0  # the first command that writes into it marks it
    assert (old / OWNER_MARKER).exists()
    mine = ws / "results" / "mine"
    mine.mkdir()
    (mine / "experiment.yaml").write_text(text.replace("name: evil", "name: mine"))
    (mine / "notes.txt").write_text("x")
    before = tree_digest(mine)
    capsys.readouterr()
    assert main(["status", str(mine)]) == 2
    assert "mine: not an EmPO experiment directory" in capsys.readouterr().err
    assert tree_digest(mine) == before
