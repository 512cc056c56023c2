"""Bad input: each problem is one clear error raised before any weights are loaded."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from trainutil import PROJECT_ROOT, SMOKE, smoke_overrides, subprocess_env

from empo import models
from empo.errors import ConfigError, EmpoError, TrainError


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Loading a tokenizer or base model fails the test: the error must come first."""
    def heavy(*args, **kwargs):
        raise AssertionError("heavy work started before the input was checked")

    monkeypatch.setattr(models, "load_base_model", heavy)
    monkeypatch.setattr(models, "load_tokenizer", heavy)


def _broken_deepspeed(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 2}\n  "train_batch_size": "auto"}\n')
    return path


@pytest.mark.parametrize("case, overrides, message", [
    ("missing base model", ["model.name_or_path=/nonexistent/zephyr"], "/nonexistent/zephyr does not exist"),
    ("base dir without config.json", ["model.name_or_path={tmp}"], "is not a model directory"),
    ("unknown target module", ["lora.target_modules=[q_proj, qkv_proj]"],
     r"no module 'qkv_proj'.*its modules are: down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, "
     r"q_proj, up_proj, v_proj"),
    ("deepspeed JSON that does not parse", ["sft.deepspeed={ds}"], r"ds.json:2: DeepSpeed config is not valid JSON"),
    ("indivisible global batch", ["sft.global_batch_size=10"], "global_batch_size=10 is not divisible"),
])
def test_sft_bad_input(make_cfg, tmp_path, no_heavy_work, case, overrides, message):
    from empo.train.sft import train_sft

    ds = _broken_deepspeed(tmp_path)
    cfg = make_cfg(*(o.format(tmp=tmp_path, ds=ds) for o in overrides))
    with pytest.raises(TrainError, match=message):
        train_sft(cfg, 1, tmp_path / "out")
    assert not (tmp_path / "out" / "adapter").exists()


@pytest.mark.parametrize("field, value", [("r", 0), ("r", -4), ("lora_alpha", 0), ("lora_alpha", -1)])
def test_non_positive_rank_or_alpha(make_cfg, tmp_path, no_heavy_work, field, value):
    from empo.train.sft import train_sft

    with pytest.raises(ConfigError, match=f"lora.{field}: {value} is out of range"):
        make_cfg(f"lora.{field}={value}")
    cfg = make_cfg()
    setattr(cfg.lora, field, value)  # built in code, past the config validation
    with pytest.raises(TrainError, match=f"lora.{field}: {value} must be > 0"):
        train_sft(cfg, 1, tmp_path / "out")


def test_dpo_without_sft_adapter(make_cfg, tmp_path, no_heavy_work):
    from empo.train.dpo import train_dpo

    with pytest.raises(TrainError, match=f"SFT adapter {tmp_path / 'nope'} does not exist"):
        train_dpo(make_cfg(), 1, tmp_path / "out", tmp_path / "nope")


def test_adapter_dir_without_adapter_config(make_cfg, tmp_path, no_heavy_work):
    from empo.train.dpo import train_dpo

    empty = tmp_path / "adapter"
    empty.mkdir()
    (empty / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(TrainError, match="has no adapter_config.json"):
        train_dpo(make_cfg(), 1, tmp_path / "out", empty)
    with pytest.raises(TrainError, match="has no adapter_config.json"):
        models.check_adapter_dir(empty)


def test_adapter_that_does_not_match_the_base(sft_run, tiny_assets, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((sft_run / "adapter" / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps(config))
    weights = load_file(sft_run / "adapter" / "adapter_model.safetensors")
    key = next(k for k in weights if k.endswith("q_proj.lora_A.weight"))
    weights[key] = torch.zeros(weights[key].shape[0], 96)  # a base with hidden 96, not 64
    save_file(weights, other / "adapter_model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(tiny_assets / "model")
    with pytest.raises(TrainError, match=r"does not match base model .*q_proj.lora_A.weight: shape \[\d+, 96\], base input size 64"):
        models.load_adapter(base, other)


def test_cli_reports_dpo_without_sft_and_bad_lora_as_one_line_errors(tiny_assets, tmp_path):
    base = [sys.executable, "-m", "empo.cli", "train"]
    over = smoke_overrides(tiny_assets, tmp_path / "results")
    dpo = subprocess.run([*base, "dpo", str(SMOKE), *over, "--seed", "7"], capture_output=True, text=True,
                         env=subprocess_env(), cwd=PROJECT_ROOT, timeout=300)
    assert dpo.returncode == 2
    expected = tmp_path / "results" / "smoke" / "runs" / "sft" / "seed-7" / "adapter"
    assert dpo.stderr.strip().splitlines()[-1].startswith(f"empo: error: SFT adapter {expected} is missing")
    bad = subprocess.run([*base, "sft", str(SMOKE), *over, "lora.r=0", "--seed", "7"], capture_output=True,
                         text=True, env=subprocess_env(), cwd=PROJECT_ROOT, timeout=300)
    assert bad.returncode == 2 and "lora.r: 0 is out of range" in bad.stderr
    assert "Traceback" not in bad.stderr + dpo.stderr


def test_every_training_error_is_an_empo_error():
    assert issubclass(TrainError, EmpoError)


def test_dpo_with_every_pair_dropped_by_trl_says_why():
    """trl drops a pair whose prompt fills max_length; with none left the stage says so."""
    from datasets import Dataset

    from empo.train.dpo import EpochDraws

    with pytest.raises(TrainError, match="no preference pair is left.*raise max_length"):
        EpochDraws(Dataset.from_dict({"epoch": []}))
