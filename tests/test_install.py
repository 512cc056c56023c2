"""A plain (non-editable) install finds its own defaults: the wheel carries empo/defaults/, and the
installed `empo` runs a data command and an SFT stage from a directory outside the checkout.

The second environment reuses this one's packages through a .pth file (torch and the rest are not
installed twice); the project itself is built into a wheel from a copy of the checkout's files and
installed there, so nothing of the checkout is importable in it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from empo.config import load_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ("empo/defaults/emotions/plutchik.tsv", "empo/defaults/deepspeed/zero2.json",
            "empo/defaults/deepspeed/zero2_offload.json", "empo/defaults/deepspeed/zero3.json",
            "empo/defaults/models/mistral-7b.json")


def test_configs_name_the_shipped_defaults_with_the_package_prefix():
    cfg = load_config(PROJECT_ROOT / "configs/experiments/table1.yaml")
    assert cfg.data.emotion_table == "empo:emotions/plutchik.tsv"
    assert cfg.resolve(cfg.data.emotion_table) == PROJECT_ROOT / DEFAULTS[0]
    assert cfg.resolve(cfg.model.architecture) == PROJECT_ROOT / DEFAULTS[-1]
    assert cfg.resolve("my/table.tsv") == PROJECT_ROOT / "my/table.tsv"  # the user's own: as before


def _copy_checkout(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored) copied to `dest`: what a wheel is built from."""
    listed = subprocess.run(["git", "-C", str(PROJECT_ROOT), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, text=True, timeout=60)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    for name in filter(None, listed.stdout.split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second venv with `pip install <wheel>` of the project; returns its bin/ directory."""
    if shutil.which("git") is None:
        pytest.skip("git not found: the wheel is built from the checkout's listed files")
    base = tmp_path_factory.mktemp("install")
    src = _copy_checkout(base / "src")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "--wheel-dir", str(base / "wheels"), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    [wheel] = (base / "wheels").glob("empo-*.whl")
    assert set(DEFAULTS) <= set(zipfile.ZipFile(wheel).namelist())
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # this environment's packages (torch, trl, pip, ...) without its editable empo finder
    (purelib / "zz-host-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return venv / "bin"


def _run(bin_dir: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_installed_package_is_used_outside_the_checkout(installed, tmp_path):
    where = _run(installed, ["python", "-c", "import empo; print(empo.__file__)"], tmp_path)
    assert where.returncode == 0, where.stderr
    assert not where.stdout.strip().startswith(str(PROJECT_ROOT)), where.stdout
    assert "site-packages" in where.stdout


@pytest.mark.slow
def test_data_preference_finds_the_shipped_emotion_table(installed, tiny_assets, tmp_path):
    run = _run(installed, ["empo", "data", "preference", "--source", str(tiny_assets / "ed"),
                           "--split", "train", "--epochs", "1", "--seed", "1", "--out",
                           "pairs.jsonl"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "pairs.jsonl").read_text().count("\n") > 10


@pytest.mark.slow
def test_one_sft_stage_runs_from_a_directory_outside_the_checkout(installed, tiny_assets, tmp_path):
    config = tmp_path / "smoke.yaml"
    shutil.copy(PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml", config)
    run = _run(installed, ["empo", "train", "sft", str(config),
                           f"assets={tiny_assets}", f"model.name_or_path={tiny_assets}/model",
                           f"model.architecture={tiny_assets}/model/config.json",
                           f"data.source={tiny_assets}/ed", "results_dir=results", "--seed", "1"],
               tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "results" / "smoke" / "runs" / "sft" / "seed-1" / "DONE").exists()
