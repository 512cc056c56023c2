"""Helpers shared by the training tests (paths, subprocess environment, train logs)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SMOKE = PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"
# DeepSpeed JIT-builds its CPU shm op on first use (~33 s); keep the build between sessions.
TORCH_EXTENSIONS = PROJECT_ROOT / ".empo-cache" / "torch_extensions"


def smoke_overrides(assets: Path, results: Path) -> list[str]:
    return [
        f"assets={assets}",
        f"model.name_or_path={assets}/model",
        f"model.architecture={assets}/model/config.json",
        f"data.source={assets}/ed",
        f"results_dir={results}",
    ]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for training subprocesses (offline, no inherited torch distributed vars)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                        "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK")}
    TORCH_EXTENSIONS.mkdir(parents=True, exist_ok=True)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TORCH_EXTENSIONS_DIR=str(TORCH_EXTENSIONS), PYTHONUNBUFFERED="1",
               PYTHONPATH=str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


PYTHON = sys.executable
