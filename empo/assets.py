"""Offline tiny assets for the embedded default and the tests: no network, a few seconds to build.

Layout of the directory made by `ensure_tiny_assets(DIR)`:
  DIR/model/      random-init MistralForCausalLM + byte-level BPE tokenizer with Zephyr's template
  DIR/ed/         a small EmpatheticDialogues corpus in the raw CSV layout (train/valid/test.csv)
  DIR/epitome/    tiny EPITOME checkpoints in the published key layout (+ encoder/ config, tokenizer)
  DIR/bertscore/  a tiny RoBERTa encoder for BERTScore
  DIR/mmlu/       a tiny MMLU-format lm-eval task (`mmlu_tiny`)
  DIR/.empo-owned the project's marker, written first: only such a directory is ever rebuilt
  DIR/COMPLETE    written last; an owned directory without it is rebuilt
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from empo.data.synthetic import write_ed_corpus
from empo.evaluate.tiny import make_tiny_eval_assets
from empo.models import ZEPHYR_CHAT_TEMPLATE
from empo.store import OWNER_MARKER, claim_dir, file_lock, remove_owned_dir

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
CORPUS_SIZES = {"train": 6, "valid": 2, "test": 2}  # dialogues per emotion and split (32 emotions)
TOKENIZER_VOCAB = 1024
MODEL_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)


def ensure_tiny_assets(out_dir: Path) -> Path:
    """Create the tiny assets in `out_dir` unless they are complete already; returns the path.

    `out_dir` must be new, empty or one the project made (its owner marker): an incomplete
    build of ours is removed and redone; any other directory is refused, never deleted.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out_dir.parent / f".{out_dir.name}.lock"):
        if (out_dir / "COMPLETE").exists():  # (reading is harmless; only deleting needs the marker)
            return out_dir
        if (out_dir / OWNER_MARKER).exists():
            log.warning("%s is an incomplete build of ours; rebuilding it", out_dir)
            remove_owned_dir(out_dir)
        claim_dir(out_dir, "tiny assets")
        log.info("creating tiny offline assets in %s", out_dir)
        with contextlib.redirect_stdout(sys.stderr):  # library chatter must not mix with results
            _build(out_dir)
        (out_dir / "COMPLETE").write_text("")
    return out_dir


def _build(out_dir: Path) -> None:
    write_ed_corpus(out_dir / "ed", per_emotion=CORPUS_SIZES, seed=0, malformed=True)
    make_tiny_causal_lm(out_dir / "model", corpus_dir=out_dir / "ed")
    make_tiny_eval_assets(out_dir)


def _corpus_lines(corpus_dir: Path) -> list[str]:
    """Training text for the tokenizer: the corpus utterances plus the chat-template markup."""
    lines = ["<|user|>", "<|assistant|>", "<|system|>"]
    for split in ("train", "valid", "test"):
        for row in (corpus_dir / f"{split}.csv").read_text().splitlines()[1:]:
            fields = row.split(",")
            if len(fields) >= 6:
                lines.append(fields[5].replace("_comma_", ","))
    return lines


def make_tiny_causal_lm(out_dir: Path, corpus_dir: Path, seed: int = 0) -> Path:
    """A random-init Mistral with a byte-level BPE trained on the corpus and Zephyr's template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast


    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus_lines(corpus_dir), trainer=trainer)
    bos = bpe.token_to_id("<s>")
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=2048,
    )
    tokenizer.chat_template = ZEPHYR_CHAT_TEMPLATE

    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **MODEL_SHAPE,
    )
    model = MistralForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
