"""ORPO stage: one reference-free preference stage from the base model on the theory-driven pairs.

trl's ORPOTrainer (Hong et al. 2024; `trl.experimental.orpo` in trl >= 1.0) adds to the NLL of the
chosen answer an odds-ratio penalty (weight `orpo.beta`, the paper's λ) on the rejected one, so
it needs neither an SFT stage before it nor a reference model. It trains a fresh LoRA (the `lora`
section) on the base, over DPO's pairs (`dpo.preference_dataset`, section `orpo`): one fresh
rejected draw per epoch, selected at each epoch's start (`dpo.EpochDraws`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empo import models, options
from empo.train import common
from empo.train.dpo import preference_dataset, serve_draws

if TYPE_CHECKING:
    from empo.config import ExperimentConfig


def build_orpo_trainer(cfg: "ExperimentConfig", seed: int, out_dir: Path,
                       callbacks: list[Any] | None = None) -> Any:
    """Check every input, then build trl's ORPOTrainer (a new LoRA on the base) over per-epoch
    draws of the pairs."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO lives in trl.experimental
    import trl
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    models.resolve_model_path(cfg)
    models.check_lora_values(cfg)
    kwargs = common.trainer_kwargs(cfg, "orpo", seed, out_dir, ORPOConfig)
    options.check_trainer_options(cfg, "orpo", trl.__version__)
    kwargs.update(beta=cfg.orpo.beta)
    tokenizer = models.load_tokenizer(cfg, padding_side="left")
    dataset, _ = preference_dataset(cfg, seed, tokenizer, stage="orpo")
    args = common.make_trainer_config(ORPOConfig, kwargs, "orpo")

    base = models.load_base_model(cfg)
    base.config.pad_token_id = tokenizer.pad_token_id
    trainer = ORPOTrainer(model=base, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=models.lora_config(cfg, models.model_module_names(cfg)),
                          callbacks=[common.train_log_callback(out_dir), *(callbacks or [])])
    return serve_draws(trainer, cfg.orpo.num_train_epochs)


def train_orpo(cfg: "ExperimentConfig", seed: int, out_dir: Path) -> Path:
    """Run (or resume) the ORPO stage into `out_dir`; returns the adapter directory."""
    return common.train_stage(cfg, "orpo", seed, out_dir,
                              lambda: build_orpo_trainer(cfg, seed, Path(out_dir)))
