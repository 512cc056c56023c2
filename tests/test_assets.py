"""`empo assets tiny`: everything the embedded default and the tests need, made offline."""
from __future__ import annotations

from empo.cli import main
from empo.data.ed import load_dialogues
from empo.data.emotions import default_table_path, load_table


def test_tiny_assets_hold_every_part(tiny_assets):
    assert (tiny_assets / "COMPLETE").exists()
    for part in ("model/config.json", "ed/train.csv", "ed/valid.csv", "ed/test.csv",
                 "epitome/finetuned_ER.pth", "epitome/finetuned_EX.pth", "epitome/finetuned_IP.pth",
                 "bertscore", "mmlu"):
        assert (tiny_assets / part).exists(), part


def test_tiny_model_loads_with_the_zephyr_template(tiny_assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from empo.models import ZEPHYR_CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(tiny_assets / "model")
    model = AutoModelForCausalLM.from_pretrained(tiny_assets / "model")
    assert model.config.model_type == "mistral"
    assert tok.chat_template == ZEPHYR_CHAT_TEMPLATE
    text = tok.apply_chat_template([{"role": "user", "content": "Hi, I lost my dog."}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\nHi, I lost my dog.</s>\n<|assistant|>\n"
    assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
    assert len(tok) == model.config.vocab_size


def test_tiny_corpus_covers_all_emotions_in_every_split(tiny_assets):
    labels = set(load_table(default_table_path()).labels())
    for split in ("train", "valid", "test"):
        result = load_dialogues(str(tiny_assets / "ed"), split)
        assert {d.emotion for d in result.dialogues} == labels
        assert {len(d.turns) % 2 for d in result.dialogues} == {0, 1}
        assert result.malformed > 0
    raw = (tiny_assets / "ed" / "train.csv").read_text()
    assert "_comma_" in raw


def test_assets_command_is_idempotent(tiny_assets, capsys):
    before = (tiny_assets / "model" / "config.json").stat().st_mtime_ns
    assert main(["assets", "tiny", "--out", str(tiny_assets)]) == 0
    assert capsys.readouterr().out.strip() == str(tiny_assets)
    assert (tiny_assets / "model" / "config.json").stat().st_mtime_ns == before
