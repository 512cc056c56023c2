"""The tiny offline evaluation assets made by `make_tiny_eval_assets`."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModel, AutoTokenizer

from empo.evaluate.epitome import SEEKER_PREFIX, seeker_groups


def test_epitome_assets_load_with_auto_classes_and_share_the_seeker(tiny_assets: Path):
    encoder = tiny_assets / "epitome" / "encoder"
    config = AutoConfig.from_pretrained(encoder)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    assert config.model_type == "roberta" and config.hidden_size == 32
    assert config.num_hidden_layers == 2 and config.vocab_size == len(tokenizer)
    assert tokenizer.pad_token_id == config.pad_token_id == 1
    states = {a: torch.load(tiny_assets / "epitome" / f"finetuned_{a}.pth", weights_only=True)
              for a in ("ER", "EX", "IP")}
    assert seeker_groups(states) == [["ER", "EX", "IP"]]
    responder = [k for k in states["ER"] if k.startswith("responder_encoder.")]
    assert not all(torch.equal(states["ER"][k], states["EX"][k]) for k in responder)
    assert any(k.startswith(SEEKER_PREFIX) for k in states["ER"])


def test_bertscore_model_dir_loads(tiny_assets: Path):
    model = AutoModel.from_pretrained(tiny_assets / "bertscore")
    assert len(model.encoder.layer) == 2
    AutoTokenizer.from_pretrained(tiny_assets / "bertscore")


def test_mmlu_task_is_a_group_of_two_with_absolute_data_files(tiny_assets: Path):
    mmlu = tiny_assets / "mmlu"
    group = yaml.safe_load((mmlu / "_mmlu_tiny.yaml").read_text())
    assert group["group"] == "mmlu_tiny" and len(group["task"]) == 2
    for name in group["task"]:
        task = yaml.safe_load((mmlu / f"{name}.yaml").read_text())
        assert task["output_type"] == "multiple_choice" and task["fewshot_split"] == "dev"
        for path in task["dataset_kwargs"]["data_files"].values():
            assert Path(path).is_absolute() and Path(path).is_file()
