"""SFT stage: LoRA on whole EmpatheticDialogues conversations, loss on listener turns only.

Lifecycle: DONE? -> check inputs (model path, LoRA, DeepSpeed, batch arithmetic, trl args, data)
-> load tokenizer + base -> trl SFTTrainer with the peft LoRA config -> train (resuming from the
last checkpoint) -> adapter/, train_log.jsonl, DONE. The tokenizer gets Zephyr's training template
(same text, {% generation %} markers, the BOS of `model.add_bos`) so `assistant_only_loss` masks
everything but the assistant contents + EOS; no token is added and the embeddings are never resized.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from empo import models, options
from empo.data import ed
from empo.data.chat import has_target, sft_example
from empo.errors import TrainError
from empo.train import common

if TYPE_CHECKING:
    from datasets import Dataset
    from trl import SFTTrainer

    from empo.config import ExperimentConfig


def sft_dataset(cfg: "ExperimentConfig") -> "Dataset":
    """The training split as conversational rows {conv_id, emotion, messages}."""
    from datasets import Dataset


    loaded = ed.load_dialogues(cfg.local_or_name(cfg.data.source), cfg.data.train_split, cfg.data.revision)
    system_prompt = cfg.system_prompt("sft")
    rows = [sft_example(d, system_prompt) for d in loaded.dialogues if has_target(d)]
    if not rows:
        raise TrainError(f"data.source {cfg.data.source}: split {cfg.data.train_split!r} has no dialogue "
                         "with a listener turn")
    return Dataset.from_list(rows)


def build_sft_trainer(
    cfg: "ExperimentConfig", seed: int, out_dir: Path, callbacks: list[Any] | None = None
) -> "SFTTrainer":
    """Check every input, then build the trl SFTTrainer (weights are loaded last)."""
    import trl
    from trl import SFTConfig, SFTTrainer

    models.resolve_model_path(cfg)
    models.check_lora_values(cfg)
    kwargs = common.trainer_kwargs(cfg, "sft", seed, out_dir, SFTConfig)
    kwargs.update(assistant_only_loss=True)
    options.check_trainer_options(cfg, "sft", trl.__version__)
    # trl refuses max_length with padding_free unless packing: truncate its rows as it would
    truncate_after = options.padding_free(cfg, "sft") and not kwargs.get("packing")
    if truncate_after:
        kwargs["max_length"] = None
    peft_config = models.lora_config(cfg, models.model_module_names(cfg))
    dataset = sft_dataset(cfg)
    tokenizer = models.load_tokenizer(cfg, padding_side="right")
    stock_template = tokenizer.chat_template
    tokenizer.chat_template = models.training_template(stock_template)
    args = common.make_trainer_config(SFTConfig, kwargs, "sft")

    model = models.load_base_model(cfg)
    n_vocab = model.get_input_embeddings().num_embeddings  # also right when ZeRO-3 partitioned it
    if len(tokenizer) > n_vocab:
        raise TrainError(f"the tokenizer has {len(tokenizer)} tokens but the model's embeddings {n_vocab}")
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[common.train_log_callback(out_dir), *(callbacks or [])],
    )
    if truncate_after:
        trainer.train_dataset = options.truncate_rows(trainer.train_dataset, cfg.sft.max_length)
    if trainer.model.get_input_embeddings().num_embeddings != n_vocab:  # pragma: no cover - guard
        raise TrainError("SFT resized the embeddings; the chat template must not add tokens")
    # The data is tokenized: the adapter directory gets the tokenizer with its stock template back.
    tokenizer.chat_template = stock_template
    return trainer


def train_sft(cfg: "ExperimentConfig", seed: int, out_dir: Path) -> Path:
    """Run (or resume) the SFT stage into `out_dir`; returns the adapter directory."""
    return common.train_stage(cfg, "sft", seed, out_dir,
                              lambda: build_sft_trainer(cfg, seed, Path(out_dir)))
