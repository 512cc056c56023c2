"""KTO stage: continue the SFT adapter of the same seed on the theory-driven pairs, unpaired.

trl's KTOTrainer (Ethayarajh et al. 2024) learns from single answers marked desirable or not: each
pair of a draw gives (prompt, chosen) as desirable and (prompt, rejected) as undesirable (trl's
unpairing of a preference dataset), as the authors' `src/kto.py` (508bd49) set the data up; that
script then trained with DPOTrainer, so it reports no KTO numbers to compare with. The pairs are
DPO's (`dpo.preference_dataset`, section `kto`): one fresh rejected draw per epoch, selected at
each epoch's start (`dpo.EpochDraws`). The reference is trl's frozen copy of the SFT adapter
(`ref`), like `dpo.reference: adapter_copy`; the KL term uses trl's mismatched completions.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from empo import models, options
from empo.train import common
from empo.train.dpo import preference_dataset, serve_draws

if TYPE_CHECKING:
    from trl import KTOTrainer

    from empo.config import ExperimentConfig

def build_kto_trainer(cfg: "ExperimentConfig", seed: int, out_dir: Path, sft_adapter: Path,
                      callbacks: list[Any] | None = None) -> "KTOTrainer":
    """Check every input, then build trl's KTOTrainer over per-epoch draws of unpaired answers."""
    import trl
    from peft import PeftModel
    from trl import KTOConfig, KTOTrainer

    models.check_adapter_dir(Path(sft_adapter), what="SFT adapter")
    models.resolve_model_path(cfg)
    models.check_lora_values(cfg)
    kwargs = common.trainer_kwargs(cfg, "kto", seed, out_dir, KTOConfig)
    options.check_trainer_options(cfg, "kto", trl.__version__)
    kwargs.update(beta=cfg.kto.beta)
    stage3 = common.zero_stage(kwargs["deepspeed"]) == 3
    tokenizer = models.load_tokenizer(cfg, padding_side="left")
    dataset, _ = preference_dataset(cfg, seed, tokenizer, stage="kto")
    args = common.make_trainer_config(KTOConfig, kwargs, "kto")

    base = models.load_base_model(cfg)
    base.config.pad_token_id = tokenizer.pad_token_id
    models.check_adapter(base, Path(sft_adapter))
    model = PeftModel.from_pretrained(base, str(sft_adapter), is_trainable=True,
                                      autocast_adapter_dtype=not stage3)
    trainer = KTOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset,
                         processing_class=tokenizer,
                         callbacks=[common.train_log_callback(out_dir), *(callbacks or [])])
    return serve_draws(trainer, cfg.kto.num_train_epochs)


def train_kto(cfg: "ExperimentConfig", seed: int, out_dir: Path, sft_adapter: Path) -> Path:
    """Run (or resume) the KTO stage into `out_dir` from `sft_adapter`; returns the adapter dir."""
    return common.train_stage(cfg, "kto", seed, out_dir, lambda: build_kto_trainer(
        cfg, seed, Path(out_dir), Path(sft_adapter)))
