"""A `cluster.nodes=2` training stage on a real two-node SLURM cluster: scripts/slurm-cluster with
SLURM_CLUSTER_NODES=2 runs node 2's slurmd in a network + UTS namespace joined by a veth pair.
The SFT job gets one task on each node, torch's gloo rendezvous spans both, and its adapter equals
a one-node run's (same global batch: 4 per device × 2 ranks vs 4 × 2 accumulation steps)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from empo.cli import main
from empo.config import load_config
from empo.launch.manifest import read_manifest
from empo.launch.status import experiment_status
from empo.pipeline import build_graph
from fakes import finish_training_and_mmlu

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT_ROOT / "scripts" / "slurm-cluster"
SMOKE = PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"
LOCAL_PROFILE = PROJECT_ROOT / "configs" / "cluster" / "local.yaml"
RUN = uuid.uuid4().hex[:6]  # job names unique to this session (accounting keeps older runs)
SFT = "sft/sft/seed-1"
TOLERANCE = 1e-5  # the training tests' adapter tolerance (resume, preemption)


def _unavailable(reason: str) -> None:
    """Skip with the reason, or fail under CI=true (CI must run it), as conftest's fixtures do."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def _nodes(conf: Path) -> list[str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True,
                         timeout=20, env={**os.environ, "SLURM_CONF": str(conf)})
    return sorted(set(out.stdout.split()))


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory) -> Path:
    """The slurm.conf of a two-node cluster: CI's (SLURM_CONF) when it has two nodes, else one
    started here with SLURM_CLUSTER_NODES=2 and stopped after the module. os.environ is left
    alone (the other cluster tests keep the one-node cluster); tests set SLURM_CONF themselves."""
    existing = os.environ.get("SLURM_CONF")
    if existing and Path(existing).is_file() and \
            "Written by scripts/slurm-cluster" in Path(existing).read_text() and \
            len(_nodes(Path(existing))) >= 2:
        yield Path(existing)
        return
    missing = [b for b in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch",
                           "ip", "unshare", "nsenter") if shutil.which(b) is None]
    if missing:
        _unavailable(f"a two-node cluster needs {', '.join(missing)}")
    if os.geteuid() != 0:
        _unavailable("a two-node cluster needs root (network namespaces, veth, slurmd)")
    cluster_dir = tmp_path_factory.mktemp("slurm2")
    start = subprocess.run([str(SCRIPT), "start", str(cluster_dir)], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "SLURM_CLUSTER_NODES": "2"})
    try:
        if start.returncode == 3:  # namespaces or veth pairs not allowed on this machine
            _unavailable(start.stderr.strip().splitlines()[-1])
        if start.returncode != 0:
            pytest.fail(f"scripts/slurm-cluster start (2 nodes) failed:\n{start.stderr}",
                        pytrace=False)
        yield cluster_dir / "etc" / "slurm.conf"
    finally:
        subprocess.run([str(SCRIPT), "stop", str(cluster_dir)], timeout=120)


def _settle(cfg, graph, timeout_s: float) -> dict:
    deadline = time.time() + timeout_s
    while True:
        statuses = {s.key: s for s in experiment_status(graph, read_manifest(cfg.experiment_dir))}
        if not [s for s in statuses.values() if s.state in ("running", "pending")]:
            return statuses
        assert time.time() < deadline, {k: s.state for k, s in statuses.items()}
        time.sleep(2)


def _adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def test_a_two_node_sft_stage_rendezvous_across_nodes_and_matches_one_node(two_node_cluster,
                                                                           tmp_path, monkeypatch,
                                                                           capsys):
    monkeypatch.setenv("SLURM_CONF", str(two_node_cluster))
    nodes = _nodes(two_node_cluster)
    runs = {}
    for count in (2, 1):  # both queued at once: the 1-node job runs beside the 2-node one
        args = [str(SMOKE), f"results_dir={tmp_path / f'nodes-{count}'}",
                f"cluster.profile={LOCAL_PROFILE}", "cluster.executor=slurm",
                f"name=two-nodes-{RUN}-{count}", f"cluster.nodes={count}", "seeds=[1]",
                "eval.metrics=[mmlu]", "sft.trainer_args={max_steps: 4}"]
        cfg = load_config(args[0], args[1:])
        graph = build_graph(cfg)
        finish_training_and_mmlu(graph, skip={SFT})  # only the SFT stage trains
        assert main(["submit", *args]) == 0, capsys.readouterr().err
        runs[count] = (cfg, graph)
    capsys.readouterr()

    status = {count: _settle(cfg, graph, timeout_s=600) for count, (cfg, graph) in runs.items()}
    for count, by_key in status.items():
        assert {s.state for s in by_key.values()} == {"done"}, \
            (count, {k: (s.state, s.error, s.log) for k, s in by_key.items()})

    cfg2, _ = runs[2]
    job = read_manifest(cfg2.experiment_dir)["jobs"][SFT]
    deadline = time.time() + 60
    while True:  # the result is written a moment before the job ends
        acct = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "NNodes,NodeList,State", "-j",
                               job["job_id"]], capture_output=True, text=True, timeout=30).stdout
        nnodes, nodelist, state = acct.strip().splitlines()[0].split("|")
        if state != "RUNNING" or time.time() > deadline:
            break
        time.sleep(1)
    assert nnodes == "2" and state == "COMPLETED", acct
    got = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                         text=True, timeout=30).stdout.split()
    assert sorted(got) == nodes, (nodelist, nodes)

    # each rank logged its torch distributed env; rank 1 ran on the other node than rank 0
    folder = Path(job["folder"])
    logs = {task: (folder / f"{job['job_id']}_{task}_log.err").read_text() for task in (0, 1)}
    ranks = {}
    for task, text in logs.items():
        match = re.search(r"torch distributed env: rank (\d) of 2, master (\S+):(\d+)", text)
        assert match, text[-3000:]
        ranks[task] = match.groups()
    assert [ranks[0][0], ranks[1][0]] == ["0", "1"] and ranks[0][1:] == ranks[1][1:]
    hosts = {re.search(r"  host: (\S+) \(SLURM job", text).group(1) for text in logs.values()}
    assert hosts == set(nodes), hosts  # the job log header's hostname: one task per node

    cfg1, _ = runs[1]
    two, one = _adapter(cfg2.experiment_dir / "runs" / "sft" / "seed-1"), \
        _adapter(cfg1.experiment_dir / "runs" / "sft" / "seed-1")
    assert two.keys() == one.keys() and two
    for name in two:
        assert (two[name] - one[name]).abs().max().item() <= TOLERANCE, name
