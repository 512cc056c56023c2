"""diff-EPITOME: published key layout, strict loading, batched scorer == one pair at a time."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, RobertaConfig

from empo.errors import EvalError
from empo.evaluate.epitome import (ASPECTS, MAX_LENGTH, EpitomeLevels, EpitomeScorer,
                                   check_state_dict, classifiers_from_state_dicts, diff_epitome,
                                   encode, expected_shapes, load_scorer, reference_logits,
                                   seeker_groups)
from empo.evaluate.tiny import random_epitome_state_dicts

ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                    type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                    eos_token_id=2)
LONG = " ".join(["i have been feeling really lonely since my best friend moved away"] * 8)


@pytest.fixture(scope="module")
def encoder_dir(tiny_assets: Path) -> Path:
    return tiny_assets / "epitome" / "encoder"


@pytest.fixture(scope="module")
def tokenizer(encoder_dir):
    return AutoTokenizer.from_pretrained(encoder_dir)


@pytest.fixture(scope="module")
def scorer(tiny_assets, encoder_dir) -> EpitomeScorer:
    return load_scorer(tiny_assets / "epitome", str(encoder_dir), batch_size=5)


@pytest.fixture(scope="module")
def pairs(eval_examples) -> tuple[list[str], list[str], list[str]]:
    """Seekers, predictions, references of varied lengths (one over 64 tokens, one empty)."""
    rows = eval_examples[:12]
    seekers = [r["seeker"] for r in rows] + [LONG, "I'm FINE."]
    references = [r["reference"] for r in rows] + ["That sounds hard.", LONG]
    predictions = [rows[(i + 1) % len(rows)]["reference"] for i in range(len(rows))] + ["", "ok"]
    return seekers, predictions, references


@pytest.fixture(scope="module")
def alone(scorer, tokenizer, pairs):
    """alone(padding, k) -> one-pair-at-a-time logits of responses k (0 = predictions,
    1 = references), computed once per module."""
    cache: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def get(padding: str, k: int) -> dict[str, torch.Tensor]:
        if (padding, k) not in cache:
            seekers, responses = pairs[0], pairs[1 + k]
            cache[padding, k] = reference_logits(scorer.classifiers, tokenizer, seekers,
                                                 responses, padding)
        return cache[padding, k]

    return get


def _published_keys(shared_dir: Path) -> dict[str, tuple[int, ...]]:
    lines = (shared_dir / "epitome" / "state_dict_keys.tsv").read_text().splitlines()
    keys = {}
    for line in lines:
        if line.strip():
            key, shape = line.split("\t")
            keys[key] = tuple(ast.literal_eval(shape))
    return keys


def test_model_has_exactly_the_published_keys_and_shapes(shared_dir):
    published = _published_keys(shared_dir)
    assert len(published) == 414  # 2 × (5 embeddings + 12 × 16 layer + 2 pooler) + 16 head keys
    assert expected_shapes(RobertaConfig(**ROBERTA_BASE)) == published  # meta device: no memory


def test_published_layout_passes_the_strict_check(shared_dir):
    published = _published_keys(shared_dir)
    state = {k: torch.empty(shape, device="meta") for k, shape in published.items()}
    check_state_dict(state, expected_shapes(RobertaConfig(**ROBERTA_BASE)), "published")


def test_tiny_checkpoints_are_in_the_published_layout(tiny_assets, encoder_dir):
    config = AutoConfig.from_pretrained(encoder_dir)
    expected = expected_shapes(config)
    for aspect in ASPECTS:
        state = torch.load(tiny_assets / "epitome" / f"finetuned_{aspect}.pth", weights_only=True)
        assert set(state) == set(expected)
        check_state_dict(state, expected, aspect)


@pytest.mark.parametrize("padding", ["none", "max_length"])
def test_batched_scorer_equals_one_pair_at_a_time(scorer, pairs, alone, padding):
    seekers, predictions, references = pairs
    scorer.padding = padding
    try:
        batched = scorer.logits(seekers, [[p, r] for p, r in zip(predictions, references)])
    finally:
        scorer.padding = "none"
    for k in (0, 1):
        expected = alone(padding, k)
        for aspect in ASPECTS:
            torch.testing.assert_close(batched[aspect][:, k], expected[aspect], rtol=1e-4,
                                       atol=1e-3)
            assert batched[aspect][:, k].argmax(-1).tolist() == \
                expected[aspect].argmax(-1).tolist()


def test_levels_vary_and_padding_changes_scores(alone):
    """The equivalence above is not vacuous: levels differ between inputs, and scoring with
    max_length padding (no cross mask) gives other logits than scoring unpadded."""
    unpadded, padded = alone("none", 0), alone("max_length", 0)
    varying = [a for a in ASPECTS if len(set(unpadded[a].argmax(-1).tolist())) > 1]
    assert len(varying) >= 2
    for aspect in ASPECTS:
        assert not torch.allclose(unpadded[aspect], padded[aspect], atol=1e-3)


def test_score_returns_prediction_and_reference_levels(scorer, pairs, alone):
    levels = scorer.score(*pairs)
    for k, got in enumerate((levels.pred, levels.ref)):
        assert got == {a: alone("none", k)[a].argmax(-1).tolist() for a in ASPECTS}
    assert levels.pred != levels.ref


def test_texts_are_lowercased_and_truncated_to_64_tokens(scorer, tokenizer):
    ids = encode(tokenizer, [LONG, "I'm SO Sad"])
    assert len(ids[0]) == MAX_LENGTH and ids[0][-1] == tokenizer.eos_token_id
    assert ids[1] == encode(tokenizer, ["i'm so sad"])[0]
    assert scorer.pair_levels(["I LOST MY JOB."], ["THAT IS TERRIBLE."]) == \
        scorer.pair_levels(["i lost my job."], ["that is terrible."])


def test_shared_seeker_encoder_is_detected_and_encoded_once(scorer, encoder_dir, tokenizer,
                                                            pairs):
    assert scorer.seeker_encoders == 1
    config = AutoConfig.from_pretrained(encoder_dir)
    separate = random_epitome_state_dicts(config, seed=3, share_seeker=False)
    assert seeker_groups(separate) == [["ER"], ["EX"], ["IP"]]
    shared = random_epitome_state_dicts(config, seed=3, share_seeker=True)
    assert seeker_groups(shared) == [["ER", "EX", "IP"]]
    unshared = EpitomeScorer(classifiers_from_state_dicts(separate, config), tokenizer,
                             batch_size=4)
    assert unshared.seeker_encoders == 3
    seekers, predictions = pairs[0][:8], pairs[1][:8]
    expected = reference_logits(unshared.classifiers, tokenizer, seekers, predictions)
    assert unshared.pair_levels(seekers, predictions) == \
        {a: expected[a].argmax(-1).tolist() for a in ASPECTS}


def test_diff_epitome_arithmetic():
    levels = EpitomeLevels(pred={"ER": [0, 2, 1, 1], "EX": [0, 0, 0, 0], "IP": [2, 2, 2, 2]},
                           ref={"ER": [0, 0, 2, 1], "EX": [0, 0, 0, 0], "IP": [0, 1, 2, 2]})
    metrics = diff_epitome(levels)
    assert metrics == {"diff_er": 5 / 4, "pred_er": 1.0, "ref_er": 0.75,
                       "diff_ex": 0.0, "pred_ex": 0.0, "ref_ex": 0.0,
                       "diff_ip": 5 / 4, "pred_ip": 2.0, "ref_ip": 1.25, "epitome_n": 4}


# ----------------------------------------------------------------------------- loading errors


@pytest.fixture()
def checkpoint_dir(tiny_assets, tmp_path) -> Path:
    out = tmp_path / "epitome"
    out.mkdir()
    for aspect in ASPECTS:
        name = f"finetuned_{aspect}.pth"
        (out / name).write_bytes((tiny_assets / "epitome" / name).read_bytes())
    return out


def _edit(path: Path, change) -> None:
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def test_missing_checkpoint_file_is_named(checkpoint_dir, encoder_dir):
    (checkpoint_dir / "finetuned_EX.pth").unlink()
    with pytest.raises(EvalError, match="finetuned_EX.pth"):
        load_scorer(checkpoint_dir, str(encoder_dir))


def test_missing_and_unexpected_keys_are_listed(checkpoint_dir, encoder_dir):
    def change(state):
        state.pop("attn.q_linear.weight")
        state["classifier.extra.weight"] = torch.zeros(2)

    _edit(checkpoint_dir / "finetuned_IP.pth", change)
    with pytest.raises(EvalError) as err:
        load_scorer(checkpoint_dir, str(encoder_dir))
    message = str(err.value)
    assert "finetuned_IP.pth" in message
    assert "missing keys: attn.q_linear.weight" in message
    assert "unexpected keys: classifier.extra.weight" in message


def test_shape_mismatch_is_listed(checkpoint_dir, encoder_dir):
    _edit(checkpoint_dir / "finetuned_ER.pth",
          lambda state: state.update({"empathy_classifier.out_proj.weight": torch.zeros(4, 32)}))
    with pytest.raises(EvalError,
                       match=r"empathy_classifier.out_proj.weight \(checkpoint \[4, 32\]"):
        load_scorer(checkpoint_dir, str(encoder_dir))


def test_encoder_config_that_does_not_fit_is_refused(checkpoint_dir, tmp_path):
    other = tmp_path / "other-encoder"
    RobertaConfig(**{**ROBERTA_BASE, "hidden_size": 48, "num_attention_heads": 2,
                     "num_hidden_layers": 2}).save_pretrained(other)
    with pytest.raises(EvalError, match="shape mismatches"):
        load_scorer(checkpoint_dir, str(other))


def test_not_a_state_dict_is_refused(checkpoint_dir, encoder_dir):
    (checkpoint_dir / "finetuned_ER.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(EvalError, match="cannot load as a state dict"):
        load_scorer(checkpoint_dir, str(encoder_dir))
