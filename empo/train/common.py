"""What the SFT and DPO stages share: distributed env, batch arithmetic, DeepSpeed configs,
trl config arguments, checkpoints/resume, the training log and the stage's outputs.

A stage's directory (DESIGN §5): `config.yaml`, `adapter/`, `train_log.jsonl`, `DONE`, and while
it runs `checkpoints/checkpoint-<step>/` (removed once DONE is written: a finished stage is never
resumed or retrained). Only rank 0 writes files other than the checkpoints DeepSpeed shards.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empo.distributed import distributed_env, scoped
from empo.errors import TrainError
from empo.store import atomic_write_jsonl, atomic_write_text, is_done, mark_done
from empo.trainer_fields import REFUSED

if TYPE_CHECKING:
    from transformers import Trainer, TrainerCallback

    from empo.config import ExperimentConfig, TrainConfig
    from empo.train.preemption import SaveAtSignal

log = logging.getLogger(__name__)

DEEPSPEED_PRESETS = ("zero2", "zero2_offload", "zero3")
# Training log fields kept from trainer.state.log_history (others, e.g. logits/*, are dropped).
LOG_FIELDS = (
    "step", "epoch", "loss", "learning_rate", "grad_norm", "entropy", "num_tokens",
    "mean_token_accuracy", "rewards/chosen", "rewards/rejected", "rewards/margins",
    "rewards/accuracies", "logps/chosen", "logps/rejected",
)


# ------------------------------------------------------------------------ distributed env


@contextlib.contextmanager
def training_env(deepspeed: bool = False) -> Iterator[dict[str, str]]:
    """The torch distributed environment (`empo.distributed`) in os.environ while a training
    stage builds and trains, and not after; none for a lone process unless it uses `deepspeed`."""
    env = distributed_env(process_group=deepspeed)
    if env.get("WORLD_SIZE", "1") != "1":
        log.info("torch distributed env: rank %s of %s, master %s:%s", env["RANK"],
                 env["WORLD_SIZE"], env.get("MASTER_ADDR"), env.get("MASTER_PORT"))
    with scoped(env):
        yield env


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def gradient_accumulation(global_batch: int, per_device: int, world: int, stage: str = "sft") -> int:
    """global = per-device × accumulation × world size; TrainError unless it divides exactly."""
    for key, value in (("global_batch_size", global_batch), ("per_device_train_batch_size", per_device)):
        if value <= 0:
            raise TrainError(f"{stage}.{key}: {value} must be > 0")
    if world <= 0:
        raise TrainError(f"world size {world} must be > 0")
    step = per_device * world
    if global_batch % step:
        raise TrainError(
            f"{stage}.global_batch_size={global_batch} is not divisible by "
            f"{stage}.per_device_train_batch_size ({per_device}) × world size ({world}) = {step}; "
            f"choose a per-device batch that divides {global_batch // math.gcd(global_batch, world)}"
        )
    return global_batch // step


# ------------------------------------------------------------------------------ DeepSpeed


def deepspeed_config_path(cfg: "ExperimentConfig", stage: str) -> Path | None:
    """`<stage>.deepspeed`: none -> None; a preset name -> empo:deepspeed/<name>.json; else a path."""
    value = getattr(cfg, stage).deepspeed
    if value in (None, "", "none"):
        return None
    if value in DEEPSPEED_PRESETS:
        path = cfg.resolve(f"empo:deepspeed/{value}.json")
        if not path.is_file():
            raise TrainError(f"{stage}.deepspeed: preset {value!r} is missing from the package ({path})")
        return path
    path = cfg.resolve(value)
    if not path.is_file():
        raise TrainError(
            f"{stage}.deepspeed: {value!r} is neither none, a preset ({', '.join(DEEPSPEED_PRESETS)}) "
            f"nor an existing JSON file ({path})"
        )
    return path


def load_deepspeed_config(cfg: "ExperimentConfig", stage: str) -> dict[str, Any] | None:
    """The parsed DeepSpeed config of a stage (None when DeepSpeed is off); errors name the file."""
    path = deepspeed_config_path(cfg, stage)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TrainError(f"{path}:{err.lineno}: DeepSpeed config is not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise TrainError(f"{path}: DeepSpeed config must be a JSON object")
    zero = data.get("zero_optimization", {})
    if not isinstance(zero, dict) or zero.get("stage", 0) not in (0, 1, 2, 3):
        raise TrainError(f"{path}: zero_optimization.stage must be 0, 1, 2 or 3")
    return data


def zero_stage(ds_config: dict[str, Any] | None) -> int:
    return int((ds_config or {}).get("zero_optimization", {}).get("stage", 0))


# ---------------------------------------------------------------------------- trl arguments


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def trainer_kwargs(
    cfg: "ExperimentConfig", stage: str, seed: int, out_dir: Path, config_cls: type
) -> dict[str, Any]:
    """Keyword arguments for trl's SFTConfig / DPOConfig from `cfg.<stage>`, validated.

    `stage` is the config section ("sft" or "dpo"). Unknown `trainer_args` keys are errors naming
    the closest trl field. Nothing heavy happens here apart from importing trl's config class.
    """
    section: TrainConfig = getattr(cfg, stage)
    valid = {f.name for f in dataclasses.fields(config_cls)}
    accumulation = gradient_accumulation(
        section.global_batch_size, section.per_device_train_batch_size, world_size(), stage
    )
    if not 0.0 <= section.warmup_ratio < 1.0:
        raise TrainError(f"{stage}.warmup_ratio: {section.warmup_ratio} must be in [0, 1)")
    if section.save_steps <= 0:
        raise TrainError(f"{stage}.save_steps: {section.save_steps} must be > 0")
    kwargs: dict[str, Any] = dict(
        output_dir=str(Path(out_dir) / "checkpoints"),
        seed=seed,
        data_seed=seed,
        learning_rate=section.learning_rate,
        num_train_epochs=section.num_train_epochs,
        per_device_train_batch_size=section.per_device_train_batch_size,
        gradient_accumulation_steps=accumulation,
        lr_scheduler_type=section.lr_scheduler_type,
        warmup_steps=section.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        optim=section.optim,
        weight_decay=section.weight_decay,
        max_grad_norm=section.max_grad_norm,
        max_length=section.max_length,
        bf16=section.bf16,
        gradient_checkpointing=section.gradient_checkpointing,
        logging_steps=section.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=section.save_steps,
        save_total_limit=section.save_total_limit,
        deepspeed=load_deepspeed_config(cfg, stage),
        use_cpu=not _cuda_available(),
        disable_tqdm=not is_rank_zero(),
        **tracking_args(cfg, stage, out_dir, section.report_to),
    )
    section_fields = {f.name for f in dataclasses.fields(section)}
    for key, value in section.trainer_args.items():
        where = f"{stage}.trainer_args.{key}"
        if key in REFUSED:  # (config validation refuses them already; a config built in code)
            raise TrainError(f"{where}: not settable ({REFUSED[key].replace('<stage>', stage)})")
        if key in section_fields:
            raise TrainError(f"{where}: set it as {stage}.{key} instead")
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.0)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise TrainError(f"{where}: not a {config_cls.__name__} field{hint}")
        kwargs[key] = value
    return kwargs


def tracking_args(cfg: "ExperimentConfig", stage: str, out_dir: Path,
                  report_to: list[str]) -> dict[str, Any]:
    """report_to and run_name (<experiment>/<variant>/seed-<s>); TensorBoard writes to
    <run dir>/tensorboard/<stage> (checkpoints/, trl's default place, is removed once DONE)."""
    if not report_to or report_to == ["none"]:
        return {"report_to": "none"}
    if "tensorboard" in report_to or "all" in report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(out_dir) / "tensorboard" / stage)
    run_dir = Path(out_dir)
    return {"report_to": list(report_to),
            "run_name": f"{cfg.name}/{run_dir.parent.name}/{run_dir.name}"}


def make_trainer_config(config_cls: type, kwargs: dict[str, Any], stage: str) -> Any:
    """trl's config object; its own value checks become TrainErrors.

    Touching `args.device` sets up accelerate's state, which starts torch.distributed (gloo on a
    CPU, nccl on GPUs), and DeepSpeed's comm layer is attached to it, before any weights load:
    under ZeRO-3, transformers loads the base inside `deepspeed.zero.Init`, which partitions over
    DeepSpeed's process group and checks the batch sizes against its world size.
    """
    try:
        args = config_cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise TrainError(f"{stage}: invalid training arguments: {err}") from None
    _ = args.device
    if args.deepspeed:
        import deepspeed
        import torch

        if not deepspeed.comm.is_initialized():  # wraps the process group accelerate started
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return args


# ------------------------------------------------------------------------ checkpoints/resume


def last_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint (one with trainer_state.json, written last) under checkpoints/."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    found = []
    for path in root.glob("checkpoint-*"):
        suffix = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and suffix.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(suffix), path))
    return max(found)[1] if found else None


def train_log_rows(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training-step entries of trainer.state.log_history, restricted to LOG_FIELDS."""
    rows = []
    for entry in log_history:
        if "loss" not in entry:
            continue
        rows.append({k: entry[k] for k in LOG_FIELDS if k in entry})
    return rows


def train_log_callback(out_dir: Path) -> "TrainerCallback":
    """A callback rewriting out_dir/train_log.jsonl from the log history at every log (rank 0)."""
    from transformers import TrainerCallback

    path = Path(out_dir) / "train_log.jsonl"

    class TrainLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if state.is_world_process_zero:
                atomic_write_jsonl(path, train_log_rows(state.log_history))

    return TrainLog()


def train_stage(cfg: "ExperimentConfig", stage: str, seed: int, out_dir: Path,
                build: Callable[[], "Trainer"]) -> Path:
    """Run (or resume) training stage `stage` into `out_dir` with the trainer `build()` makes
    inside the distributed environment; returns the adapter directory (a finished stage's as is)."""
    out_dir = Path(out_dir)
    done = done_adapter(out_dir)
    if done is not None:
        log.info("%s seed %s is done: %s", stage.upper(), seed, done)
        return done
    with training_env(deepspeed_config_path(cfg, stage) is not None):  # while it trains
        trainer = build()
        start_stage(cfg, out_dir)
        return run_training(trainer, out_dir)


def start_stage(cfg: "ExperimentConfig", out_dir: Path) -> None:
    """Create the stage directory and write the resolved config (rank 0)."""
    out_dir = Path(out_dir)
    if is_rank_zero():
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())


def run_training(trainer: "Trainer", out_dir: Path) -> Path:
    """Train (resuming from the last complete checkpoint), save the adapter, write the log and
    DONE; at the requeue signal, save a checkpoint of the step in progress and hand the job back
    (`preemption.SaveAtSignal`)."""
    from empo.train.preemption import SaveAtSignal

    at_signal = SaveAtSignal(trainer.accelerator)
    trainer.add_callback(at_signal)
    at_signal.install()
    try:
        return _train_and_finish(trainer, Path(out_dir), at_signal)
    finally:
        at_signal.uninstall()


def _train_and_finish(trainer: "Trainer", out_dir: Path, at_signal: "SaveAtSignal") -> Path:
    resume = last_checkpoint(out_dir)
    if resume is not None:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if at_signal.stopped_at is not None and at_signal.stopped_at < trainer.state.max_steps:
        at_signal.hand_on()  # (signalled in its last step, the stage finishes instead)
    adapter = out_dir / "adapter"
    staging = out_dir / "adapter.partial"
    if trainer.is_world_process_zero() and staging.exists():
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # every rank takes part (ZeRO-3 gathers the weights)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        finish_stage(staging, adapter, out_dir, trainer.state.log_history)
    trainer.accelerator.wait_for_everyone()
    return adapter


def finish_stage(staging: Path, adapter: Path, out_dir: Path, log_history: list[dict[str, Any]]) -> None:
    """Move the saved adapter in place, write train_log.jsonl and DONE, drop the checkpoints."""
    for extra in ("ref", "README.md", "training_args.bin"):  # trl's frozen reference copy, card, args
        target = staging / extra
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    if adapter.exists():
        shutil.rmtree(adapter)
    os.replace(staging, adapter)
    atomic_write_jsonl(out_dir / "train_log.jsonl", train_log_rows(log_history))
    mark_done(out_dir)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)


def done_adapter(out_dir: Path) -> Path | None:
    """The finished adapter when the stage is DONE (never retrained or overwritten)."""
    if is_done(out_dir):
        adapter = Path(out_dir) / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise TrainError(f"{out_dir} is marked DONE but {adapter} holds no adapter")
        return adapter
    return None
