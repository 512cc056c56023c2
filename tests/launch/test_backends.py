"""The backend interface (empo/launch/backends/): each executor is one module behind one
interface, loaded by name when used, and no module outside the backends branches on an
executor's name."""
from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from launchutil import PROJECT_ROOT
from empo.config import ClusterConfig, load_config
from empo.errors import ConfigError, LaunchError
from empo.executors import EXECUTORS, SlurmOptions
from empo.launch import job_resources, make_executor
from empo.launch.backends import Backend, backend, batch_backend, by_backend
from empo.launch.manifest import check_jobs

SMOKE = PROJECT_ROOT / "configs/experiments/smoke.yaml"
PACKAGE = PROJECT_ROOT / "empo"
BACKENDS = PACKAGE / "launch" / "backends"
# Comparisons with these names that are not about an executor: (file, the other operand).
NOT_AN_EXECUTOR = {("fetch.py", "self.state")}   # an asset row's source: a "local" file


@pytest.mark.parametrize("name", EXECUTORS)
def test_each_backend_is_loaded_by_its_name(name):
    chosen = backend(name)
    assert isinstance(chosen, Backend) and chosen.name == name
    assert type(chosen).__module__ == f"empo.launch.backends.{name}"
    assert (BACKENDS / f"{name}.py").is_file()


def test_a_backend_module_is_imported_only_when_it_is_used():
    code = ("import sys, empo.launch, empo.launch.run, empo.cli\n"
            "loaded = [m for m in sys.modules if m.startswith('empo.launch.backends.')]\n"
            "assert not loaded, loaded\n"
            "from empo.launch.backends import backend\n"
            "backend('debug')\n"
            "assert 'empo.launch.backends.debug' in sys.modules\n"
            "assert 'empo.launch.backends.slurm' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_an_unknown_backend_is_named_with_the_allowed_ones(tmp_path):
    with pytest.raises(LaunchError, match=r"unknown executor 'pbs'; allowed: local, debug, slurm"):
        backend("pbs")
    with pytest.raises(ConfigError, match=r"cluster.executor: 'pbs' allowed: local, debug, slurm"):
        load_config(SMOKE, [f"results_dir={tmp_path}", "cluster.executor=pbs"])


def _executor_comparisons(path: Path, root: Path = PROJECT_ROOT) -> list[str]:
    """`x == "slurm"`, `x in ("local", "debug")`, `case "slurm":` ... in one module."""
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(root)
    found = []

    def names(node: ast.AST) -> set[str]:
        items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return {i.value for i in items if isinstance(i, ast.Constant) and i.value in EXECUTORS}

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for i, operand in enumerate(operands):
                others = [ast.unparse(o) for j, o in enumerate(operands) if j != i]
                if names(operand) and not any((path.name, o) in NOT_AN_EXECUTOR for o in others):
                    found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.MatchValue) and names(node.value):
            found.append(f"{where}:{node.lineno}: case {ast.unparse(node.value)}")
    return found


def test_no_module_outside_the_backends_compares_against_an_executor_name(tmp_path):
    modules = [p for p in PACKAGE.rglob("*.py") if BACKENDS not in p.parents]
    assert len(modules) > 40
    found = [line for path in modules for line in _executor_comparisons(path)]
    assert not found, "branches on an executor's name outside launch/backends/:\n" + "\n".join(found)
    # the check itself finds such a branch
    probe = tmp_path / "probe.py"
    probe.write_text("def f(cfg, e):\n    if cfg.cluster.executor == 'slurm':\n        pass\n"
                     "    match e:\n        case 'debug':\n            pass\n"
                     "    return e.get('executor') in ('local', 'debug')\n")
    assert sorted(int(line.split(":")[1]) for line in _executor_comparisons(probe, tmp_path)) \
        == [2, 5, 7]


def test_the_slurm_fields_are_the_slurm_backends_and_keep_their_cluster_keys(tmp_path):
    slurm = {f.name for f in dataclasses.fields(SlurmOptions)}
    assert slurm == {"partition", "account", "qos", "cpu_partition", "wckey", "mail_user",
                     "mail_type", "signal_lead_s", "slurm_extra"}
    assert backend("slurm").options is SlurmOptions
    assert issubclass(ClusterConfig, SlurmOptions)
    assert not slurm & set(ClusterConfig.__annotations__)  # declared once, by SlurmOptions
    cfg = load_config(SMOKE, [f"results_dir={tmp_path}", "cluster.partition=gpu",
                              "cluster.slurm_extra={constraint: a100}"])
    assert (cfg.cluster.partition, cfg.cluster.slurm_extra) == ("gpu", {"constraint": "a100"})
    with pytest.raises(ConfigError, match="cluster.slurm_extra: 'Bad Key' is not an sbatch"):
        load_config(SMOKE, [f"results_dir={tmp_path}", "cluster.slurm_extra={Bad Key: 1}"])
    config_source = (PACKAGE / "config.py").read_text()
    imported = {node.module for node in ast.walk(ast.parse(config_source))
                if isinstance(node, ast.ImportFrom)}
    assert not any(m and m.startswith("empo.launch") for m in imported)


def test_submit_queues_on_the_configured_batch_system_or_slurm():
    assert batch_backend("slurm").name == "slurm"
    assert batch_backend("local").name == batch_backend("debug").name == "slurm"
    assert [name for name in EXECUTORS if backend(name).queued] == ["slurm"]


def test_only_a_batch_backend_writes_job_scripts(tmp_path):
    cfg = load_config(SMOKE, [f"results_dir={tmp_path}/results", "cluster.partition=cpu"])
    resources = job_resources(cfg, "aggregate", "smoke:aggregate")
    ex = make_executor(cfg, "slurm", tmp_path / "jobs", resources, script_only=True)
    script = backend("slurm").script(ex, 3)
    assert "#SBATCH --partition=cpu" in script and "#SBATCH --array=0-2" in script
    local = make_executor(cfg, "local", tmp_path / "jobs", resources)
    with pytest.raises(LaunchError, match="the local executor writes no job script"):
        backend("local").script(local, 1)


def test_job_ids_have_each_backends_form(tmp_path):
    for executor, good, bad in [("slurm", "123_4", "123;rm"), ("local", "4242", "42a"),
                                ("debug", "abc-1.x", "a b")]:
        check_jobs({"s": {"executor": executor, "job_id": good}}, tmp_path)
        with pytest.raises(LaunchError, match=f"is not a {executor} job id"):
            check_jobs({"s": {"executor": executor, "job_id": bad}}, tmp_path)
    with pytest.raises(LaunchError, match="executor 'pbs'; allowed: local, debug, slurm"):
        check_jobs({"s": {"executor": "pbs", "job_id": "1"}}, tmp_path)


def test_each_backend_describes_and_cancels_its_own_jobs(tmp_path):
    jobs = {"a": {"executor": "debug", "job_id": "x1", "state": "COMPLETED"},
            "b": {"executor": "debug", "job_id": "x2"},
            "c": {"executor": "local", "job_id": "999999999", "state": "FAILED"},
            "d": {"executor": "local", "job_id": "999999998"}}   # no such process: not ours
    grouped = by_backend(jobs.values())
    assert sorted(grouped) == ["debug", "local"]
    states = {}
    for chosen, entries in grouped.values():
        states.update(chosen.describe(entries, tmp_path))
    assert states == {"x1": "COMPLETED", "x2": "UNKNOWN", "999999999": "FAILED",
                      "999999998": "FAILED"}
    assert backend("local").list(jobs) == {"c": jobs["c"], "d": jobs["d"]}
    assert backend("local").cancel([jobs["d"]], {"999999998"}, tmp_path, 0.1) == []
    assert backend("debug").cancel([jobs["b"]], {"x2"}, tmp_path, 0.1) == []
    assert backend("debug").logs({"stdout": "/x/1.out", "stderr": "/x/1.err"}, err=True) == \
        Path("/x/1.err")
