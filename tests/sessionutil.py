"""What session-scoped fixtures share across pytest-xdist workers: the run's common temp dir."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's temp dir; under pytest-xdist the one every worker of this run shares
    (.../pytest-N/popen-gwK -> .../pytest-N), so what is built there under a lock is built once."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
