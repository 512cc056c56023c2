"""DPO stage: continue an SFT adapter (the same seed's, or `dpo.sft_seed`'s for every run) on
theory-driven preference pairs.

Reference model (`dpo.reference`):
  adapter_copy (paper, default): `PeftModel.from_pretrained(base, sft_adapter, is_trainable=True)`
      with `ref_model=None`; trl adds a frozen copy of the adapter named `ref` and trains `default`.
      The reference is exactly the SFT policy, at the cost of one more adapter's weights in memory.
  merged: the SFT adapter is merged into the base and a fresh LoRA (same lora.* config) is trained
      on top; trl's reference is that LoRA disabled, i.e. the merged SFT model. No extra memory.

Epoch k trains on draw k. `preference_pairs(..., epochs=E)` gives E draws of rejected responses
(rows carry `epoch`). All E·N rows are tokenized once by trl (so precomputed reference log-probs,
when enabled, are per row and per draw), then wrapped in `EpochDraws`, a map-style dataset of
length N that serves the rows of one draw. A callback selects draw k at the start of epoch k
(`on_epoch_begin`, with k = int(state.epoch), which is also right after a resume), so the trainer's
own epoch loop, sampler (shuffled per epoch), optimizer, scheduler and checkpoint/resume logic are
untouched: one trainer.train() over E epochs, the LR schedule spans all of them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from empo import models, options
from empo.data import ed
from empo.data.emotions import load_table
from empo.data.preference import cap_prompt, even, length_cutoff, preference_pairs
from empo.errors import TrainError
from empo.train import common

if TYPE_CHECKING:
    from datasets import Dataset
    from trl import DPOTrainer

    from empo.config import ExperimentConfig

log = logging.getLogger(__name__)


class EpochDraws:
    """A map-style dataset over the rows of one preference draw at a time (see module docstring)."""

    def __init__(self, rows: "Dataset", epoch_column: str = "epoch"):
        epochs = rows[epoch_column]
        if not epochs:
            raise TrainError("no preference pair is left after trl's tokenization: every prompt "
                             "(with the system prompt) leaves no room for a response within "
                             "max_length; raise max_length or shorten system_prompt")
        labels = sorted(set(epochs))
        self.rows = rows
        self.index = {e: [i for i, v in enumerate(epochs) if v == e] for e in labels}
        self.draws = [self.index[e] for e in labels]
        sizes = {len(d) for d in self.draws}
        if len(sizes) != 1:
            raise TrainError(f"preference draws have different sizes {sorted(sizes)}; every epoch must "
                             "hold every dialogue once")
        self.epoch = 0

    @property
    def num_draws(self) -> int:
        return len(self.draws)

    def select(self, epoch: int) -> None:
        if not 0 <= epoch < self.num_draws:
            raise TrainError(f"epoch {epoch} has no preference draw (there are {self.num_draws})")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.draws[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[self.draws[self.epoch][i]]


def draw_selector(draws: EpochDraws) -> Any:
    """A callback pointing `draws` at the trainer's current epoch before each epoch's dataloader."""
    from transformers import TrainerCallback

    class SelectDraw(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            draws.select(int(state.epoch or 0))

    return SelectDraw()


def serve_draws(trainer: Any, epochs: int) -> Any:
    """Make `trainer` train on one preference draw per epoch (its tokenized rows as `EpochDraws`,
    switched by `draw_selector`); TrainError unless there is one draw for each of `epochs`."""
    draws = EpochDraws(trainer.train_dataset)
    if draws.num_draws != epochs:
        raise TrainError(f"{draws.num_draws} preference draws for {epochs} epochs")
    trainer.train_dataset = draws
    trainer.add_callback(draw_selector(draws))
    return trainer


class LengthCaps(NamedTuple):
    """`dpo.length_percentile`'s caps (the authors' dpo_ps.py:48-53), in tokens, before rounding."""

    max_length: int          # the larger percentile of prompt + chosen and prompt + rejected
    max_prompt_length: int   # the percentile of the prompt lengths


def preference_dataset(cfg: "ExperimentConfig", seed: int, tokenizer: Any = None,
                       stage: str = "dpo") -> tuple["Dataset", LengthCaps | None]:
    """All draws of preference pairs for `seed`, one per epoch of training section `stage` (rows
    of draw k have epoch == k), and the length caps of its `length_percentile` (None when it is
    unset or the section has none; then `tokenizer` is not needed)."""
    from datasets import Dataset


    section = getattr(cfg, stage)
    loaded = ed.load_dialogues(cfg.local_or_name(cfg.data.source), cfg.data.train_split, cfg.data.revision)
    table = load_table(cfg.resolve(cfg.data.emotion_table))
    rows = preference_pairs(
        loaded.columns, table, epochs=section.num_train_epochs, seed=seed,
        sampling=cfg.data.sampling, system_prompt=cfg.system_prompt(stage),
        where=f"{cfg.data.source} ({cfg.data.train_split})",
    )
    if not rows:
        raise TrainError(f"data.source {cfg.data.source}: no preference pairs in {cfg.data.train_split!r}")
    cutoff = None
    percentile = getattr(section, "length_percentile", None)
    if percentile is not None:
        rows, cutoff = drop_long_pairs(rows, tokenizer, percentile)
        if not rows:
            raise TrainError(f"{stage}.length_percentile {percentile} left no pairs")
    return Dataset.from_list(rows), cutoff


def drop_long_pairs(rows: list[dict[str, Any]], tokenizer: Any,
                    percentile: float) -> tuple[list[dict[str, Any]], LengthCaps]:
    """Rows of the dialogues whose prompt + chosen fits `length_cutoff`, and the caps (that
    cutoff; the percentile of the prompt lengths over all rows, as dpo_ps.py:49-50 before its
    filter); token counts are the chat template's rendering tokenized as trl does (no added
    special tokens)."""
    import numpy as np


    def count(messages: list[dict[str, str]]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    chosen, prompt = {}, {}
    for row in rows:
        if row["conv_id"] not in chosen:
            chosen[row["conv_id"]] = count(row["prompt"] + row["chosen"])
            prompt[row["conv_id"]] = count(row["prompt"])
    rejected = [count(row["prompt"] + row["rejected"]) for row in rows]
    cutoff = length_cutoff([chosen[row["conv_id"]] for row in rows], rejected, percentile)
    prompt_cap = int(np.percentile([prompt[row["conv_id"]] for row in rows], percentile))
    kept = [row for row in rows if chosen[row["conv_id"]] <= cutoff]
    log.info("dpo.length_percentile %s: cap %d tokens (prompts %d), %d of %d pairs kept",
             percentile, cutoff, prompt_cap, len(kept), len(rows))
    return kept, LengthCaps(cutoff, prompt_cap)


class PromptCap:
    """A collator that truncates each tokenized pair as trl 0.8 did (`preference.cap_prompt`)
    before trl's own collator pads it; used for training and for precomputed reference
    log-probabilities alike, since trl builds both batches with the trainer's collator."""

    def __init__(self, collator: Any, max_length: int, max_prompt_length: int):
        self.collator, self.max_length, self.max_prompt_length = (collator, max_length,
                                                                  max_prompt_length)

    def __call__(self, examples: list[dict[str, Any]]) -> Any:
        capped = []
        for example in examples:
            ids = cap_prompt(example["prompt_ids"], example["chosen_ids"], example["rejected_ids"],
                             self.max_length, self.max_prompt_length)
            capped.append({**example, **dict(zip(("prompt_ids", "chosen_ids", "rejected_ids"),
                                                 ids))})
        return self.collator(capped)


def build_dpo_trainer(
    cfg: "ExperimentConfig", seed: int, out_dir: Path, sft_adapter: Path,
    callbacks: list[Any] | None = None,
) -> "DPOTrainer":
    """Check every input, then build the trl DPOTrainer over per-epoch draws."""
    import trl
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    if cfg.dpo.num_train_epochs < 1 or int(cfg.dpo.num_train_epochs) != cfg.dpo.num_train_epochs:
        raise TrainError(f"dpo.num_train_epochs: {cfg.dpo.num_train_epochs} must be a whole number >= 1 "
                         "(one preference draw per epoch)")
    models.check_adapter_dir(Path(sft_adapter), what="SFT adapter")
    models.resolve_model_path(cfg)
    models.check_lora_values(cfg)
    kwargs = common.trainer_kwargs(cfg, "dpo", seed, out_dir, DPOConfig)
    options.check_trainer_options(cfg, "dpo", trl.__version__)
    kwargs.update(beta=cfg.dpo.beta, loss_type=[cfg.dpo.loss_type])
    stage3 = common.zero_stage(kwargs["deepspeed"]) == 3
    if stage3 and cfg.dpo.reference == "merged":
        raise TrainError("dpo.reference=merged needs the whole base to merge the SFT adapter into, which "
                         "ZeRO-3 partitions: use dpo.reference=adapter_copy or dpo.deepspeed=zero2")
    if cfg.dpo.reference == "merged" and cfg.model.quantization != "none":
        raise TrainError("dpo.reference=merged merges the SFT adapter into the base, which "
                         f"model.quantization={cfg.model.quantization} keeps in 4 bits: use "
                         "dpo.reference=adapter_copy")
    peft_config = None
    if cfg.dpo.reference == "merged":
        peft_config = models.lora_config(cfg, models.model_module_names(cfg))
    tokenizer = models.load_tokenizer(cfg, padding_side="left")
    dataset, caps = preference_dataset(cfg, seed, tokenizer)
    collator = None
    if caps is not None:  # the authors' caps, rounded up to even as in their dpo_ps.py:66-67
        kwargs["max_length"] = min(kwargs["max_length"], even(caps.max_length))
        collator = PromptCap(DataCollatorForPreference(
            pad_token_id=tokenizer.pad_token_id, max_length=kwargs["max_length"],
            truncation_mode=kwargs.get("truncation_mode", "keep_start"),
            pad_to_multiple_of=kwargs.get("pad_to_multiple_of")),
            kwargs["max_length"], even(caps.max_prompt_length))
    args = common.make_trainer_config(DPOConfig, kwargs, "dpo")

    base = models.load_base_model(cfg)
    base.config.pad_token_id = tokenizer.pad_token_id
    if cfg.dpo.reference == "merged":
        model = models.merge_adapter(base, Path(sft_adapter))
    else:
        models.check_adapter(base, Path(sft_adapter))
        from peft import PeftModel

        model = PeftModel.from_pretrained(
            base, str(sft_adapter), is_trainable=True, autocast_adapter_dtype=not stage3
        )
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=collator,
        peft_config=peft_config,
        callbacks=[common.train_log_callback(out_dir), *(callbacks or [])],
    )
    return serve_draws(trainer, cfg.dpo.num_train_epochs)


def train_dpo(cfg: "ExperimentConfig", seed: int, out_dir: Path, sft_adapter: Path) -> Path:
    """Run (or resume) the DPO stage into `out_dir` from `sft_adapter`; returns the adapter dir."""
    return common.train_stage(cfg, "dpo", seed, out_dir, lambda: build_dpo_trainer(
        cfg, seed, Path(out_dir), Path(sft_adapter)))


def seed_run(cfg: "ExperimentConfig", seed: int) -> tuple[int, "ExperimentConfig"]:
    """DPO seed `seed`'s seed structure (the registry's `seed_run`): the SFT seed whose adapter
    it continues, its own (independent chains) or `dpo.sft_seed` for every DPO run, and its
    config, with `dpo.beta` set to that seed's entry of `dpo.betas`."""
    start = seed if cfg.dpo.sft_seed is None else cfg.dpo.sft_seed
    beta = cfg.dpo.beta_of(seed)
    return start, (cfg if beta == cfg.dpo.beta else cfg.with_overrides({"dpo.beta": beta}))
