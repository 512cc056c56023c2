"""Helpers of the cluster tests (tests/, on the path by tests/conftest.py): the smoke experiment
on the local cluster's profile, and an experiment's jobs still in squeue."""
from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def smoke_args(results: Path, *more: str) -> list[str]:
    return [str(ROOT / "configs/experiments/smoke.yaml"), f"results_dir={results}",
            f"cluster.profile={ROOT / 'configs/cluster/local.yaml'}", "cluster.executor=slurm", *more]


def queued(cluster, name: str) -> list[str]:
    """Ids of this experiment's jobs in squeue (array tasks included)."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %j"], capture_output=True, text=True,
                         env=cluster.env(), timeout=30, check=True).stdout
    return sorted(line.split()[0] for line in out.splitlines() if f" {name}:" in line)
