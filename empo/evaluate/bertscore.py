"""BERTScore of predictions against references (bert-score; default roberta-large, its layer)."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from empo.errors import EvalError


def resolve_layers(model: str, num_layers: int | None) -> int:
    """The layer to use: given, or bert-score's table entry; a local model must name one."""
    if num_layers is not None:
        if num_layers < 1:
            raise EvalError(f"BERTScore num_layers must be >= 1, got {num_layers}")
        config = Path(model) / "config.json"
        if config.is_file():
            total = json.loads(config.read_text()).get("num_hidden_layers")
            if isinstance(total, int) and num_layers > total:
                raise EvalError(f"BERTScore num_layers {num_layers}: {model} has {total} layers")
        return num_layers
    if os.path.isdir(model):
        raise EvalError(f"BERTScore model {model} is a local path: give its layer count "
                        f"(--num-layers / eval.bertscore.num_layers)")
    from bert_score.utils import model2layers

    if model not in model2layers:
        raise EvalError(f"BERTScore model '{model}' has no default layer in bert-score's table: "
                        f"give --num-layers / eval.bertscore.num_layers")
    return model2layers[model]


def bertscore(predictions: Sequence[str], references: Sequence[str], model: str = "roberta-large",
              num_layers: int | None = None, batch_size: int = 64,
              rescale_with_baseline: bool = False, device: str | None = None) -> dict[str, float]:
    """Mean F1 (`fbert`), precision and recall over the pairs."""
    return mean_scores(bertscore_items(predictions, references, model, num_layers, batch_size,
                                       rescale_with_baseline, device))


def mean_scores(items: Sequence[dict[str, float]]) -> dict[str, float]:
    """`fbert`, `bertscore_precision`, `bertscore_recall`: the means of per-pair scores."""
    n = len(items)
    return {"fbert": sum(i["fbert"] for i in items) / n,
            "bertscore_precision": sum(i["precision"] for i in items) / n,
            "bertscore_recall": sum(i["recall"] for i in items) / n}


def bertscore_items(predictions: Sequence[str], references: Sequence[str],
                    model: str = "roberta-large", num_layers: int | None = None,
                    batch_size: int = 64, rescale_with_baseline: bool = False,
                    device: str | None = None) -> list[dict[str, float]]:
    """Per pair: F1 (`fbert`), precision and recall, in input order."""
    if len(predictions) != len(references):
        raise EvalError("BERTScore: predictions and references differ in length")
    if not predictions:
        raise EvalError("BERTScore: nothing to score")
    if batch_size < 1:
        raise EvalError(f"BERTScore batch size must be >= 1, got {batch_size}")
    layers = resolve_layers(model, num_layers)
    kwargs = {}
    if rescale_with_baseline:
        import bert_score

        baseline = Path(bert_score.__file__).parent / "rescale_baseline" / "en" / f"{model}.tsv"
        if not baseline.is_file():
            raise EvalError(f"BERTScore: no rescaling baseline for '{model}' in bert-score "
                            f"(looked for {baseline})")
        kwargs = {"rescale_with_baseline": True, "lang": "en"}
    from bert_score import score

    try:
        precision, recall, f1 = score(list(predictions), list(references), model_type=model,
                                      num_layers=layers, batch_size=batch_size, device=device,
                                      **kwargs)
    except OSError as err:
        raise EvalError(f"cannot load BERTScore model '{model}' ({err})") from None
    return [{"fbert": f, "precision": p, "recall": r}
            for f, p, r in zip(f1.tolist(), precision.tolist(), recall.tolist())]
