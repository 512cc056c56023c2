"""The evaluation stages of the pipeline (generate, epitome, bertscore, mmlu) and the file-level
runners the `empo eval` commands share with them. Each stage skips when its DONE.<stage> marker
exists, merges its keys into run_dir/metrics.json, then marks itself done."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from empo.config import ExperimentConfig
from empo.data import ed
from empo.data.chat import eligible, eval_example
from empo.errors import EvalError
from empo.evaluate import read_jsonl
from empo.evaluate.bertscore import bertscore_items, mean_scores
from empo.evaluate.epitome_data import CHECKPOINTS, trained_dir
from empo.evaluate.epitome_layout import DIGESTS_FILE, checkpoint_digests
from empo.evaluate.generate import GenerationSettings, generate_predictions, load_generator
from empo.evaluate.mmlu import run_mmlu
from empo.evaluate.vllm_backend import generate_vllm, require_vllm
from empo.reader import read_json
from empo.store import atomic_write_json, atomic_write_jsonl, is_done, mark_done, merge_json

log = logging.getLogger(__name__)

EPITOME_KEYS = ("diff_er", "diff_ex", "diff_ip", "pred_er", "pred_ex", "pred_ip",
                "ref_er", "ref_ex", "ref_ip", "epitome_n")
BERTSCORE_KEYS = ("fbert", "bertscore_precision", "bertscore_recall")
MMLU_KEYS = ("mmlu",)
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"


# ----------------------------------------------------------------------------- file runners


def scored_rows(rows: list[dict[str, Any]], drop_empty: bool) -> list[dict[str, Any]]:
    """The prediction rows to score: all, or (`eval.drop_empty_predictions`) those whose
    prediction is not empty after stripping whitespace."""
    return [r for r in rows if str(r["prediction"]).strip()] if drop_empty else rows


def epitome_file(predictions: Path, checkpoints: Path, encoder: str = "roberta-base",
                 tokenizer: str | None = None, padding: str = "none", batch_size: int = 32,
                 per_item: Path | None = None, drop_empty: bool = False) -> dict[str, Any]:
    """diff-EPITOME of a predictions file; per-item levels written to `per_item` when given."""
    from empo.evaluate.epitome import diff_epitome, load_scorer

    rows = scored_rows(read_jsonl(predictions, ("seeker", "prediction", "reference"),
                                  what="predictions"), drop_empty)
    scorer = load_scorer(checkpoints, encoder, tokenizer, padding=padding, batch_size=batch_size,
                         progress=True)
    levels = scorer.score([r["seeker"] for r in rows], [r["prediction"] for r in rows],
                          [r["reference"] for r in rows])
    if per_item is not None:
        items = []
        for i, row in enumerate(rows):
            item: dict[str, Any] = {"conv_id": row.get("conv_id", i)}
            for aspect in levels.pred:
                item[f"pred_{aspect.lower()}"] = levels.pred[aspect][i]
                item[f"ref_{aspect.lower()}"] = levels.ref[aspect][i]
            items.append(item)
        atomic_write_jsonl(Path(per_item), items)
    return diff_epitome(levels)


def bertscore_file(predictions: Path, model: str = "roberta-large", num_layers: int | None = None,
                   batch_size: int = 64, rescale_with_baseline: bool = False,
                   drop_empty: bool = False, per_item: Path | None = None) -> dict[str, float]:
    """BERTScore (fbert, precision, recall) of a predictions file; per-pair scores written to
    `per_item` when given (a line per scored row, in epitome_items.jsonl's order)."""
    rows = scored_rows(read_jsonl(predictions, ("prediction", "reference"), what="predictions"),
                       drop_empty)
    items = bertscore_items([r["prediction"] for r in rows], [r["reference"] for r in rows],
                            model, num_layers, batch_size, rescale_with_baseline)
    if per_item is not None:
        atomic_write_jsonl(Path(per_item), [{"conv_id": row.get("conv_id", i), **item}
                                            for i, (row, item) in enumerate(zip(rows, items))])
    return mean_scores(items)


# ----------------------------------------------------------------------------- helpers


def eval_examples(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """The eval split as generation inputs (DESIGN §3), first `data.max_eval_examples` only."""
    result = ed.load_dialogues(cfg.local_or_name(cfg.data.source), cfg.data.eval_split,
                            cfg.data.revision)
    dialogues = eligible(result.dialogues)
    if cfg.data.max_eval_examples is not None:
        dialogues = dialogues[: cfg.data.max_eval_examples]
    if not dialogues:
        raise EvalError(f"data.source {cfg.data.source}: split '{cfg.data.eval_split}' has no "
                        f"dialogue to evaluate")
    return [eval_example(d, cfg.system_prompt("eval")) for d in dialogues]


def _stored(run_dir: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    path = run_dir / METRICS
    current = read_json(path) if path.exists() else {}
    return {k: current[k] for k in keys if k in current}


def _finish(run_dir: Path, stage: str, metrics: dict[str, Any]) -> dict[str, Any]:
    merge_json(run_dir / METRICS, metrics)
    mark_done(run_dir, stage)
    log.info("%s: %s", stage, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return metrics


# ----------------------------------------------------------------------------- stages


def generate_stage(cfg: ExperimentConfig, seed: int, run_dir: Path,
                   adapter: Path | None) -> Path:
    """run_dir/predictions.jsonl for the eval split (resumable), then DONE.generate."""
    run_dir = Path(run_dir)
    out = run_dir / PREDICTIONS
    if is_done(run_dir, "generate"):
        return out
    backend = cfg.eval.generation.backend
    if backend not in ("transformers", "vllm"):
        raise EvalError(f"eval.generation.backend '{backend}': allowed transformers, vllm")
    if backend == "vllm":
        require_vllm()  # before the eval split is read
    run_dir.mkdir(parents=True, exist_ok=True)
    examples = eval_examples(cfg)  # the system prompt is already in each prompt
    settings = GenerationSettings.from_config(cfg.eval.generation)
    base = cfg.local_or_name(cfg.model.name_or_path)
    template = str(cfg.resolve(cfg.model.chat_template)) if cfg.model.chat_template else None
    if backend == "vllm":
        signature = {"base": base, "adapter": str(adapter) if adapter else None,
                     "chat_template": template, "seed": seed, "add_bos": cfg.model.add_bos}
        generate_vllm(examples, out, base, adapter, settings, signature, cfg.model.dtype, template,
                      cfg.model.add_bos, seed, cfg.model.quantization,
                      cfg.model.attn_implementation)
        mark_done(run_dir, "generate")
        return out
    model, tokenizer = load_generator(base, adapter, cfg.model.dtype,
                                      cfg.model.attn_implementation, template,
                                      add_bos=cfg.model.add_bos,
                                      quantization=cfg.model.quantization)
    from transformers import set_seed

    set_seed(seed)
    signature = {"base": base, "adapter": str(adapter) if adapter else None,
                 "chat_template": template, "seed": seed, "add_bos": cfg.model.add_bos,
                 "quantization": cfg.model.quantization}
    generate_predictions(examples, out, model, tokenizer, settings, signature=signature)
    mark_done(run_dir, "generate")
    return out


def epitome_stage(cfg: ExperimentConfig, run_dir: Path,
                  checkpoints: Path | None = None) -> dict[str, Any]:
    """diff-EPITOME of run_dir/predictions.jsonl (+ per-item levels in epitome_items.jsonl and
    the classifiers' sha256 in epitome_checkpoints.json), with `checkpoints` (the pipeline's
    trained ones) or else eval.epitome.checkpoints."""
    run_dir = Path(run_dir)
    if is_done(run_dir, "epitome"):
        return _stored(run_dir, EPITOME_KEYS)
    settings = cfg.eval.epitome
    if checkpoints is None and settings.checkpoints == "train":
        checkpoints = trained_dir(cfg) / CHECKPOINTS
    if checkpoints is None and not settings.checkpoints:
        raise EvalError("eval.epitome.checkpoints is not set: a directory with the published "
                        "finetuned_ER.pth, finetuned_EX.pth and finetuned_IP.pth, or 'train' "
                        "(trained from eval.epitome.train_data, see `empo epitome train`)")
    directory = checkpoints or cfg.resolve(settings.checkpoints)
    metrics = epitome_file(run_dir / PREDICTIONS, directory, cfg.local_or_name(settings.encoder),
                           cfg.local_or_name(settings.tokenizer), settings.padding,
                           settings.batch_size, per_item=run_dir / "epitome_items.jsonl",
                           drop_empty=cfg.eval.drop_empty_predictions)
    atomic_write_json(run_dir / DIGESTS_FILE, {"directory": str(directory),
                                               "files": checkpoint_digests(directory)})
    return _finish(run_dir, "epitome", metrics)


def bertscore_stage(cfg: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """BERTScore F1/P/R of run_dir/predictions.jsonl (+ per-pair scores in bertscore_items.jsonl)."""
    run_dir = Path(run_dir)
    if is_done(run_dir, "bertscore"):
        return _stored(run_dir, BERTSCORE_KEYS)
    settings = cfg.eval.bertscore
    metrics = bertscore_file(run_dir / PREDICTIONS, cfg.local_or_name(settings.model),
                             settings.num_layers, settings.batch_size,
                             settings.rescale_with_baseline,
                             drop_empty=cfg.eval.drop_empty_predictions,
                             per_item=run_dir / "bertscore_items.jsonl")
    return _finish(run_dir, "bertscore", metrics)


def mmlu_stage(cfg: ExperimentConfig, run_dir: Path, adapter: Path | None) -> dict[str, Any]:
    """MMLU accuracy of base + adapter; lm-eval's results kept in run_dir/mmlu_results.json."""
    run_dir = Path(run_dir)
    if is_done(run_dir, "mmlu"):
        return _stored(run_dir, MMLU_KEYS)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = cfg.eval.mmlu
    metrics = run_mmlu(cfg.local_or_name(cfg.model.name_or_path), adapter, settings.tasks,
                       settings.num_fewshot,
                       cfg.resolve(settings.include_path) if settings.include_path else None,
                       settings.batch_size, settings.limit, cfg.model.dtype,
                       results_path=run_dir / "mmlu_results.json")
    return _finish(run_dir, "mmlu", metrics)
