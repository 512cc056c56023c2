"""Stage plumbing: batch arithmetic, DeepSpeed config selection, trl arguments, env, checkpoints."""
from __future__ import annotations

import json
import os

import pytest

from empo.errors import TrainError
from empo.train import common


@pytest.mark.parametrize("global_batch, per_device, world, accumulation", [
    (64, 4, 1, 16), (64, 4, 2, 8), (64, 4, 16, 1), (64, 2, 2, 16), (64, 1, 64, 1), (8, 4, 1, 2),
])
def test_global_batch_becomes_per_device_times_accumulation_times_world(
        global_batch, per_device, world, accumulation):
    got = common.gradient_accumulation(global_batch, per_device, world)
    assert got == accumulation
    assert per_device * got * world == global_batch


@pytest.mark.parametrize("global_batch, per_device, world", [(64, 3, 1), (64, 4, 32), (64, 4, 3), (10, 4, 1)])
def test_indivisible_global_batch_is_an_error(global_batch, per_device, world):
    with pytest.raises(TrainError, match=f"global_batch_size={global_batch} is not divisible"):
        common.gradient_accumulation(global_batch, per_device, world)


def test_trainer_kwargs_follow_world_size(make_cfg, monkeypatch, tmp_path):
    from trl import SFTConfig

    cfg = make_cfg("sft.global_batch_size=64", "sft.per_device_train_batch_size=4")
    for world, accumulation in ((1, 16), (2, 8), (16, 1)):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        kwargs = common.trainer_kwargs(cfg, "sft", 3, tmp_path, SFTConfig)
        assert kwargs["gradient_accumulation_steps"] == accumulation
        assert kwargs["per_device_train_batch_size"] == 4
    assert kwargs["output_dir"] == str(tmp_path / "checkpoints")
    assert kwargs["seed"] == 3 and kwargs["deepspeed"] is None
    assert kwargs["use_cpu"] is True  # this machine has no CUDA


def test_trl_fields_in_the_recipe_reach_the_trainer_and_unknown_ones_are_refused(make_cfg, tmp_path):
    """Any field of trl's SFTConfig/DPOConfig may sit in the sft/dpo section (validated by name
    against trl's source at config time, by trl at stage start); ours and the managed ones not."""
    from trl import DPOConfig, SFTConfig

    from empo.errors import ConfigError

    cfg = make_cfg("sft.neftune_noise_alpha=5", "dpo.trainer_args={max_steps: 4}",
                   "dpo.label_smoothing=0.1")
    assert cfg.sft.trainer_args == {"neftune_noise_alpha": 5}
    sft = common.make_trainer_config(SFTConfig, common.trainer_kwargs(cfg, "sft", 1, tmp_path,
                                                                      SFTConfig), "sft")
    assert sft.neftune_noise_alpha == 5
    dpo = common.trainer_kwargs(cfg, "dpo", 1, tmp_path, DPOConfig)
    assert dpo["label_smoothing"] == 0.1 and dpo["max_steps"] == 4
    with pytest.raises(ConfigError, match="unknown config key 'sft.neftune_noise_alpa'; did you "
                                          "mean 'sft.neftune_noise_alpha'"):
        make_cfg("sft.neftune_noise_alpa=5")
    with pytest.raises(ConfigError, match="dpo.trainer_args.max_grad_nrom: not a field of trl's "
                                          "DPOConfig; did you mean 'max_grad_norm'"):
        make_cfg("dpo.trainer_args={max_grad_nrom: 0.5}")
    with pytest.raises(ConfigError, match="gradient_accumulation_steps: not settable"):
        make_cfg("dpo.gradient_accumulation_steps=3")
    with pytest.raises(ConfigError, match="per-epoch draw"):
        make_cfg("dpo.dataloader_persistent_workers=true")
    with pytest.raises(TrainError, match="set it as dpo.learning_rate"):
        common.trainer_kwargs(make_cfg("dpo.trainer_args={learning_rate: 0.1}"), "dpo", 1, tmp_path,
                              DPOConfig)


@pytest.mark.parametrize("name, stage", [("zero2", 2), ("zero2_offload", 2), ("zero3", 3)])
def test_deepspeed_presets_are_shipped_with_auto_batch_fields(make_cfg, name, stage):
    cfg = make_cfg(f"sft.deepspeed={name}")
    path = common.deepspeed_config_path(cfg, "sft")
    assert path.name == f"{name}.json" and path.parent.name == "deepspeed"
    ds = common.load_deepspeed_config(cfg, "sft")
    assert common.zero_stage(ds) == stage
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert ds[key] == "auto"
    assert ("offload_optimizer" in ds["zero_optimization"]) == (name == "zero2_offload")


def test_deepspeed_none_and_custom_paths(make_cfg, tmp_path):
    assert common.load_deepspeed_config(make_cfg("sft.deepspeed=none"), "sft") is None
    custom = tmp_path / "mine.json"
    custom.write_text(json.dumps({"zero_optimization": {"stage": 1}, "train_batch_size": "auto"}))
    assert common.zero_stage(common.load_deepspeed_config(make_cfg(f"dpo.deepspeed={custom}"), "dpo")) == 1
    with pytest.raises(TrainError, match="neither none, a preset"):
        common.load_deepspeed_config(make_cfg("sft.deepspeed=zero4"), "sft")


def test_deepspeed_json_that_does_not_parse_names_the_file_and_line(make_cfg, tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{\n  "zero_optimization": {"stage": 2,}\n}\n')
    with pytest.raises(TrainError, match=rf"{bad}:2: DeepSpeed config is not valid JSON"):
        common.load_deepspeed_config(make_cfg(f"sft.deepspeed={bad}"), "sft")


def test_single_process_gets_a_distributed_env_only_under_deepspeed_and_only_while_it_trains(
        monkeypatch):
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR",
             "SLURM_STEP_ID")
    for key in names:
        monkeypatch.delenv(key, raising=False)
    with common.training_env() as env:  # one process, no DeepSpeed: no DDP for a world of one
        assert env == {} and not [key for key in names if key in os.environ]
        assert common.is_rank_zero() and common.world_size() == 1
    with common.training_env(deepspeed=True) as env:
        assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == (
            "0", "1", "0", "127.0.0.1")
        assert 0 < int(env["MASTER_PORT"]) < 65536 and os.environ["MASTER_PORT"] == env["MASTER_PORT"]
        assert common.is_rank_zero() and common.world_size() == 1
    assert not [key for key in names if key in os.environ]  # nothing leaks past the stage
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with common.training_env() as env:
        assert env["RANK"] == "1"  # a launcher's values are kept
        assert not common.is_rank_zero() and common.world_size() == 2


def test_last_checkpoint_skips_incomplete_ones(tmp_path):
    assert common.last_checkpoint(tmp_path) is None
    for step, complete in ((4, True), (8, True), (12, False)):
        ckpt = tmp_path / "checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        if complete:
            (ckpt / "trainer_state.json").write_text("{}")
    assert common.last_checkpoint(tmp_path) == tmp_path / "checkpoints" / "checkpoint-8"


def test_train_log_rows_keep_training_entries_and_the_named_fields():
    history = [
        {"step": 1, "epoch": 0.1, "loss": 0.7, "learning_rate": 1e-5, "grad_norm": 0.3,
         "rewards/chosen": 0.1, "rewards/rejected": 0.0, "rewards/margins": 0.1,
         "rewards/accuracies": 1.0, "logits/chosen": 3.0},
        {"step": 2, "train_runtime": 3.0, "train_loss": 0.7},
    ]
    rows = common.train_log_rows(history)
    assert rows == [{"step": 1, "epoch": 0.1, "loss": 0.7, "learning_rate": 1e-5, "grad_norm": 0.3,
                     "rewards/chosen": 0.1, "rewards/rejected": 0.0, "rewards/margins": 0.1,
                     "rewards/accuracies": 1.0}]
