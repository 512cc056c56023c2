"""The training chat template: Zephyr's text exactly, loss on listener contents + EOS only."""
from __future__ import annotations

import pytest

from empo import models
from empo.errors import TrainError

CONVERSATIONS = [
    [{"role": "user", "content": "I feel so alone since my dog ran away."},
     {"role": "assistant", "content": "I'm so sorry. How long has it been?"}],
    [{"role": "system", "content": "You are a caring listener."},
     {"role": "user", "content": "I got the job!"},
     {"role": "assistant", "content": "Congratulations, that's wonderful news."},
     {"role": "user", "content": "Thanks, I start Monday."},
     {"role": "assistant", "content": "You must be so excited.\nGood luck!"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "  spaces and\ttabs  "}],
]


@pytest.fixture(scope="module")
def tokenizer(tiny_assets):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_assets / "model")


def test_tiny_tokenizer_ships_the_stock_zephyr_template(tokenizer):
    assert tokenizer.chat_template == models.ZEPHYR_CHAT_TEMPLATE


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_training_template_renders_byte_identical_text(tokenizer, messages, add_generation_prompt):
    stock = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=models.ZEPHYR_CHAT_TEMPLATE,
                                          add_generation_prompt=add_generation_prompt)
    train = tokenizer.apply_chat_template(messages, tokenize=False,
                                          chat_template=models.ZEPHYR_TRAINING_TEMPLATE,
                                          add_generation_prompt=add_generation_prompt)
    assert train == stock
    assert "<|assistant|>\n" in stock and stock.count("</s>") == len(messages)


def test_training_template_is_chosen_for_zephyr_and_refused_for_unknown_templates():
    assert models.training_template(models.ZEPHYR_CHAT_TEMPLATE) == models.ZEPHYR_TRAINING_TEMPLATE
    assert models.training_template(models.ZEPHYR_TRAINING_TEMPLATE) == models.ZEPHYR_TRAINING_TEMPLATE
    with pytest.raises(TrainError, match="generation"):
        models.training_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def test_sft_trains_exactly_the_assistant_contents_plus_eos(make_cfg):
    """The labels trl builds from the training template: every assistant content + EOS, nothing else."""
    from empo.train.sft import build_sft_trainer, sft_dataset

    cfg = make_cfg()
    raw = sft_dataset(cfg)
    trainer = build_sft_trainer(cfg, seed=1, out_dir=make_cfg().experiment_dir / "template-check")
    tok = trainer.processing_class
    prepared = trainer.train_dataset
    assert len(prepared) == len(raw)
    vocab = trainer.model.get_input_embeddings().weight.shape[0]
    assert len(tok) <= vocab  # no token added, nothing resized
    for row, example in zip(prepared, raw):
        trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
        assert [label for label in row["labels"] if label != -100] == trained  # labels are the ids
        expected = []
        for message in example["messages"]:
            if message["role"] == "assistant":
                expected += tok(message["content"], add_special_tokens=False)["input_ids"]
                expected.append(tok.eos_token_id)
        assert trained == expected, example["conv_id"]
    # the text the model trains on is the stock template's rendering after one BOS (add_bos: auto)
    first = raw[0]["messages"]
    stock = tok.apply_chat_template(first, tokenize=False, chat_template=models.ZEPHYR_CHAT_TEMPLATE)
    assert tok.decode(prepared[0]["input_ids"]) == tok.bos_token + stock
    assert prepared[0]["input_ids"].count(tok.bos_token_id) == 1
    assert tok.pad_token == "<pad>"  # an existing token
