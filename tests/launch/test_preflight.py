"""Preflight without SLURM: every asset problem of a config is reported at once, one line each
naming the config key and the fix, exit 2, nothing written; `--no-preflight` skips it; a Hub id
counts only when it is in the (offline) cache; EPITOME checkpoints are read key by key without
torch. `empo submit --dry-run` writes the job scripts without a cluster."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from empo.cli import main
from empo.config import load_config
from empo.evaluate.epitome_layout import checkpoint_problems, state_dict_shapes
from empo.hub import experiment_assets, hub_environment
from empo.launch.preflight import check_assets

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SMOKE = PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"


def smoke(tmp_path: Path, *more: str) -> list[str]:
    return [str(SMOKE), f"results_dir={tmp_path / 'results'}", *more]


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert err.startswith("empo: error: preflight found"), err
    return err.splitlines()[1:]


def test_every_asset_problem_is_listed_once_with_its_key_and_nothing_is_written(tiny, tmp_path,
                                                                                 capsys):
    broken = tmp_path / "epitome"
    broken.mkdir()
    shutil.copy(tiny / "epitome" / "finetuned_ER.pth", broken / "finetuned_ER.pth")
    (broken / "finetuned_EX.pth").write_bytes(b"not a checkpoint")
    args = smoke(tmp_path, f"model.name_or_path={tmp_path}/no-model", "data.source=no/such/dir",
                 f"eval.epitome.checkpoints={broken}", "eval.bertscore.num_layers=null",
                 "eval.mmlu.tasks=[mmlu_nonexistent]", "eval.epitome.encoder=roberta-base",
                 "eval.epitome.tokenizer=roberta-base")
    assert main(["run", *args, "--executor", "local"]) == 2
    lines = error_lines(capsys)
    keys = [line.split(":")[0].strip() for line in lines]
    assert keys == ["model.name_or_path", "data.source", "eval.epitome.checkpoints",
                    "eval.epitome.checkpoints", "eval.epitome.encoder", "eval.bertscore.num_layers",
                    "eval.mmlu.tasks"], lines
    assert "does not exist" in lines[0] and " — " in lines[0]  # what, then the fix
    assert "finetuned_EX.pth: cannot read as a torch state dict" in lines[2]
    assert "finetuned_IP.pth is missing" in lines[3]
    assert "Hub model roberta-base is not in the cache" in lines[4] and "empo fetch" in lines[4]
    assert "mmlu_nonexistent" in lines[6]
    assert not (tmp_path / "results" / "smoke").exists()  # nothing written, nothing started
    # the same list from `config validate --preflight`; --no-preflight goes past it
    assert main(["config", "validate", *args, "--preflight"]) == 2
    assert len(error_lines(capsys)) == 7
    assert main(["config", "validate", *args]) == 0


def test_an_unset_epitome_directory_and_a_wrong_key_layout_are_named(tiny, tmp_path):
    import torch

    cfg = load_config(SMOKE, ["eval.epitome.checkpoints=null"])
    problems = [p for p in check_assets(cfg) if p.key == "eval.epitome.checkpoints"]
    assert len(problems) == 1 and "not set" in problems[0].what and "README" in problems[0].fix
    shapes = state_dict_shapes(tiny / "epitome" / "finetuned_IP.pth")
    state = {k: torch.zeros(s) for k, s in shapes.items() if "rationale" not in k}
    state["extra.weight"] = torch.zeros(1)
    for name in ("finetuned_ER.pth", "finetuned_EX.pth", "finetuned_IP.pth"):
        torch.save(state, tmp_path / name)
    (problem, *_rest) = checkpoint_problems(tmp_path)
    assert "not the published EPITOME key layout" in problem and "missing keys" in problem
    assert "unexpected keys (e.g. extra.weight)" in problem
    assert checkpoint_problems(tiny / "epitome") == []


def test_the_key_list_is_read_without_torch(tiny):
    code = ("import sys; from empo.evaluate.epitome_layout import checkpoint_problems as c; "
            f"assert c({str(tiny / 'epitome')!r}) == []; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_hub_id_counts_only_when_it_is_in_the_offline_cache(tiny, tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    cfg = load_config(SMOKE, ["model.name_or_path=empo-test/tiny-model", "cluster.offline=true",
                              f"cluster.hf_home={cache}", "eval.metrics=[]"])
    (asset,) = [a for a in experiment_assets(cfg) if a.key == "model.name_or_path"]
    assert asset.hub
    assert [p.key for p in check_assets(cfg)] == ["model.name_or_path"]
    # the layout huggingface_hub writes: refs/main -> snapshots/<commit>/
    repo = cache / "hub" / "models--empo-test--tiny-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(tiny / "model", repo / "snapshots" / ("0" * 40))
    assert check_assets(cfg) == []
    online = load_config(SMOKE, ["model.name_or_path=empo-test/other", "cluster.offline=false",
                                 f"cluster.hf_home={cache}", "eval.metrics=[]"])
    assert check_assets(online) == []  # online jobs download it themselves


def test_offline_jobs_get_the_hub_variables_and_the_cache(tmp_path):
    from empo.launch import job_environment, job_resources

    cfg = load_config(SMOKE, ["cluster.offline=true", f"cluster.hf_home={tmp_path}"])
    env = job_environment(job_resources(cfg, "sft", "x"))
    assert env["HF_HUB_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["HF_HOME"] == str(tmp_path)
    from empo.launch.containers import container_command

    cmd = container_command(load_config(SMOKE, [
        "cluster.offline=true", f"cluster.hf_home={tmp_path}",
        "cluster.container.runtime=charliecloud", f"cluster.container.image={tmp_path}"]),
        [], gpus=False)
    assert f"-b {tmp_path}:{tmp_path}" in cmd.python


def test_dry_run_without_a_cluster_writes_the_scripts_and_queues_nothing(tiny, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "no-cluster.conf"))  # clients, no cluster
    args = smoke(tmp_path, "cluster.executor=slurm", "cluster.nodes=2", "cluster.gpus_per_node=2",
                 "cluster.partition=gpu")
    code = main(["submit", "--dry-run", *args, "--no-preflight"])
    out = capsys.readouterr().out
    assert code == 0, out
    scripts = sorted((tmp_path / "results" / "smoke" / "dry-run").glob("*.sbatch"))
    assert [s.name for s in scripts][:2] == ["00-sft-sft.sbatch", "01-dpo-sft_dpo.sbatch"]
    sft = scripts[0].read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=2", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --array=0-1%2", "#SBATCH --partition=gpu", "srun --unbuffered"):
        assert line in sft, sft
    assert "HF_HUB_OFFLINE=1" in sft  # slurm jobs run offline by default
    dpo = scripts[1].read_text()
    assert "#SBATCH --dependency='aftercorr:<sft/sft>'" in dpo  # the array it waits for
    assert "2 node × 2 task" in out
    assert not (tmp_path / "results" / "smoke" / "manifest.json").exists()
    assert not (tmp_path / "results" / "smoke" / "experiment.yaml").exists()


@pytest.mark.slow  # tier: a stage subprocess from a freshly fetched cache (27 s on the loaded box)
def test_fetch_fills_a_fresh_cache_that_offline_preflight_then_accepts(tiny, tmp_path,
                                                                       monkeypatch, capsys):
    """The Hub is mocked (no network here): snapshot_download copies the tiny model into the
    cache layout huggingface_hub writes, once; a second fetch finds it cached."""
    import huggingface_hub

    real = huggingface_hub.snapshot_download
    calls = []

    def hub(repo_id, repo_type=None, revision=None, cache_dir=None, local_files_only=False,
            **kwargs):
        if local_files_only:
            return real(repo_id, repo_type=repo_type, revision=revision, cache_dir=cache_dir,
                        local_files_only=True)
        calls.append(repo_id)
        repo = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("1" * 40)
        shutil.copytree(tiny / "model", repo / "snapshots" / ("1" * 40))
        return str(repo / "snapshots" / ("1" * 40))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    for name in ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after fetch sets them
    cache = tmp_path / "fresh-cache"
    args = [str(SMOKE), "model.name_or_path=empo-test/tiny-model", "cluster.offline=true",
            f"cluster.hf_home={cache}", f"results_dir={tmp_path / 'results'}"]
    assert main(["config", "validate", *args, "--preflight"]) == 2
    assert "empo-test/tiny-model is not in the cache" in capsys.readouterr().err
    assert main(["fetch", *args]) == 0
    out = capsys.readouterr().out
    assert calls == ["empo-test/tiny-model"]
    assert "downloaded" in out and "sha256 " in out and "finetuned_ER.pth" in out
    record = json.loads((cache / "empo-fetch" / "smoke.json").read_text())
    assert {r["key"]: r["state"] for r in record}["model.name_or_path"] == "downloaded"
    assert main(["fetch", *args]) == 0 and calls == ["empo-test/tiny-model"]  # idempotent
    assert "cached" in capsys.readouterr().out
    assert main(["config", "validate", *args, "--preflight"]) == 0
    # a stage then runs from that cache alone, with the Hub offline (as on a compute node)

    env = {**os.environ, **hub_environment(load_config(args[0], args[1:]))}
    done = subprocess.run([sys.executable, "-m", "empo.cli", "stage", "generate", *args,
                           "--variant", "baseline", "--seed", "1"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "generate/baseline/seed-1: done" in done.stdout


@pytest.mark.parametrize("name", ["table1.yaml", "table1_code_508bd49.yaml"])
def test_both_table1_configs_dry_run_without_a_cluster(name, tmp_path, capsys, monkeypatch):
    """The paper's setup and the 508bd49 code preset (nf4 included) render every job script."""
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "no-cluster.conf"))
    config = Path(__file__).resolve().parents[2] / "configs" / "experiments" / name
    assert main(["submit", "--dry-run", str(config), f"results_dir={tmp_path}",
                 "--no-preflight"]) == 0
    experiment = load_config(config).name
    scripts = sorted((tmp_path / experiment / "dry-run").glob("*.sbatch"))
    assert [s.name.split("-", 1)[1] for s in scripts] == [
        "sft-sft.sbatch", "dpo-sft_dpo.sbatch", "eval-baseline.sbatch", "share-baseline.sbatch",
        "eval-sft.sbatch", "eval-sft_dpo.sbatch", "aggregate.sbatch"]
    assert "#SBATCH --gpus-per-node=2" in scripts[0].read_text()
    assert not (tmp_path / experiment / "manifest.json").exists()  # nothing was queued
