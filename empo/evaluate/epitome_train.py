"""Train the three EPITOME classifiers (ER, EX, IP) from the Reddit annotations with the original
recipe (Sharma et al., 2020; behavioral-data/Empathy-Mental-Health), into the published layout.

Reads top to bottom: annotations -> split -> token labels -> for each mechanism: build the
`EpitomeClassifier` of the scorer from a pretrained RoBERTa, train, test -> write the checkpoints
and report.json atomically. Values of the recipe and where they come from: `epitome_data.Recipe`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from empo.errors import EvalError
from empo.evaluate.epitome import (ASPECTS, CHECKPOINT_FILES, EpitomeClassifier, encode,
                                   load_encoder_config, load_tokenizer, pad)
from empo.evaluate.epitome_data import (CHECKPOINTS, DEFAULT_SEED, SPLIT_FRACTIONS, SPLITS, STAGE,
                                        Annotation, Recipe, fingerprint, load_annotations,
                                        split_annotations, stage_fields, training_fields)
from empo.store import atomic_write_json, is_done, mark_done

log = logging.getLogger(__name__)

REPORT = "report.json"
IGNORE = -100  # rationale positions outside the response's attention mask (src/models/models.py)
# Where to compare the test accuracies (no number is copied here: none could be checked against a
# source at hand, and a number nobody can trace does not ship).
PAPER_SOURCE = ("Sharma et al. (2020), EMNLP, arXiv:2009.08441: empathy identification results "
                "(compare by hand)")


# ----------------------------------------------------------------------------- token labels


def token_labels(tokenizer, row: Annotation, max_length: int = 64) -> tuple[list[int], list[int]]:
    """Response token ids (lowercased, truncated, like the scorer's `encode`) and rationale labels:
    1 on every token that overlaps a rationale span, else 0. A response without rationales is
    labelled 1 from its first token through </s> (src/process_data.py:
    `rationale_labels[1:len(response_non_padded_words)] = 1`)."""
    enc = tokenizer(row.response.lower(), truncation=True, max_length=max_length,
                    add_special_tokens=True, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    ids = enc["input_ids"]
    if not row.spans:
        return ids, [0] + [1] * (len(ids) - 1)
    labels = [int(not special and any(a < end and b > start for start, end in row.spans))
              for (a, b), special in zip(enc["offset_mapping"], enc["special_tokens_mask"])]
    return ids, labels


def encode_rows(tokenizer, rows: Sequence[Annotation], max_length: int) -> dict[str, torch.Tensor]:
    """Seekers and responses padded to `max_length` (the original's pad_to_max_length), empathy
    levels and rationale labels (IGNORE on padding)."""
    seeker_ids, seeker_mask = pad(encode(tokenizer, [r.seeker for r in rows]),
                                  tokenizer.pad_token_id, max_length)
    responses, labels = zip(*(token_labels(tokenizer, r, max_length) for r in rows))
    response_ids, response_mask = pad(responses, tokenizer.pad_token_id, max_length)
    rationale = torch.full_like(response_ids, IGNORE)
    for i, row_labels in enumerate(labels):
        rationale[i, :len(row_labels)] = torch.tensor(row_labels)
    return {"seeker_ids": seeker_ids, "seeker_mask": seeker_mask, "response_ids": response_ids,
            "response_mask": response_mask, "rationale": rationale,
            "level": torch.tensor([r.level for r in rows])}


# ----------------------------------------------------------------------------- model


def pretrained_encoder(encoder: str, config) -> tuple[dict[str, torch.Tensor], str]:
    """The RobertaModel weights both encoders start from, and how they were made. A local
    directory without weights (the tiny test encoder) gives a seeded random model, with a warning."""
    from transformers import RobertaModel

    path = Path(encoder)
    if path.is_dir() and not any(p.suffix in (".safetensors", ".bin") for p in path.iterdir()):
        log.warning("EPITOME encoder %s has no weights: random initialisation (tests only)", path)
        return RobertaModel(config, add_pooling_layer=True).state_dict(), f"random ({path})"
    try:
        model = RobertaModel.from_pretrained(encoder, config=config, add_pooling_layer=True)
    except (OSError, ValueError) as err:
        raise EvalError(f"cannot load the EPITOME encoder weights '{encoder}' ({err}); offline, "
                        f"give a local directory") from None
    return model.state_dict(), f"pretrained ({encoder})"


def build_classifier(config, encoder_state: dict[str, torch.Tensor],
                     recipe: Recipe) -> EpitomeClassifier:
    """The scorer's model, heads initialised like src/models/models.py (normal(0, 0.02) weights,
    zero biases), both encoders from `encoder_state`, the seeker encoder frozen."""
    model = EpitomeClassifier(config, dropout=recipe.dropout)
    for head in (model.rationale_classifier, model.attn, model.empathy_classifier):
        for module in head.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=recipe.head_init_std)
                torch.nn.init.zeros_(module.bias)
    model.seeker_encoder.roberta.load_state_dict(encoder_state)
    model.responder_encoder.roberta.load_state_dict(encoder_state)
    model.seeker_encoder.requires_grad_(recipe.train_seeker_encoder)
    return model


def _batch(data: dict[str, torch.Tensor], index: torch.Tensor, device) -> dict[str, torch.Tensor]:
    return {k: v[index].to(device) for k, v in data.items()}


def _forward(model: EpitomeClassifier, batch: dict[str, torch.Tensor]):
    """Seeker and response padded to max length, no cross-attention mask: the original training."""
    return model(batch["seeker_ids"], batch["response_ids"], batch["seeker_mask"],
                 batch["response_mask"], cross_mask=None)


# ----------------------------------------------------------------------------- metrics


def classification_metrics(true: Sequence[int], pred: Sequence[int], levels: int = 3
                           ) -> dict[str, Any]:
    """Accuracy, macro-F1 (over the levels present in either list, like sklearn's f1_score) and
    the confusion matrix (rows: annotated level, columns: predicted)."""
    confusion = [[0] * levels for _ in range(levels)]
    for t, p in zip(true, pred):
        confusion[t][p] += 1
    present = sorted(set(true) | set(pred))
    f1s = []
    for c in present:
        tp = confusion[c][c]
        predicted = sum(confusion[r][c] for r in range(levels))
        actual = sum(confusion[c])
        f1s.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    n = len(true)
    return {"n": n, "accuracy": sum(confusion[i][i] for i in range(levels)) / n if n else None,
            "macro_f1": sum(f1s) / len(f1s) if f1s else None, "confusion": confusion}


@torch.inference_mode()
def evaluate(model: EpitomeClassifier, data: dict[str, torch.Tensor], batch_size: int,
             device) -> dict[str, Any]:
    model.eval()
    preds: list[int] = []
    for start in range(0, len(data["level"]), batch_size):
        index = torch.arange(start, min(start + batch_size, len(data["level"])))
        empathy, _ = _forward(model, _batch(data, index, device))
        preds += empathy.argmax(-1).tolist()
    return classification_metrics(data["level"].tolist(), preds)


# ----------------------------------------------------------------------------- training


def train_one(config, encoder_state, train: dict[str, torch.Tensor], dev: dict[str, torch.Tensor],
              recipe: Recipe, seed: int, device) -> tuple[EpitomeClassifier, dict[str, Any]]:
    """One mechanism's classifier: AdamW, linear decay without warmup, gradient clipping, loss
    lambda_EI * CE(empathy) + lambda_RE * CE(rationale tokens) (src/train.py, models.py)."""
    torch.manual_seed(seed)
    model = build_classifier(config, encoder_state, recipe).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, eps=recipe.adam_epsilon,
                                  weight_decay=recipe.weight_decay)
    n = len(train["level"])
    total = math.ceil(n / recipe.batch_size) * recipe.epochs
    if recipe.max_steps is not None:
        total = min(total, recipe.max_steps)
    warmup = recipe.warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
        step / max(1, warmup) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))))
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    step = 0
    for epoch in range(recipe.epochs):
        if step >= total:
            break
        model.train()
        losses = []
        for index in torch.randperm(n, generator=generator).split(recipe.batch_size):
            if step >= total:
                break
            batch = _batch(train, index, device)
            empathy, rationale = _forward(model, batch)
            loss_ei = F.cross_entropy(empathy, batch["level"])
            loss_re = F.cross_entropy(rationale.reshape(-1, 2), batch["rationale"].reshape(-1),
                                      ignore_index=IGNORE)
            loss = recipe.lambda_ei * loss_ei + recipe.lambda_re * loss_re
            model.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
            optimizer.step()
            schedule.step()
            losses.append((loss.item(), loss_ei.item(), loss_re.item()))
            step += 1
        record: dict[str, Any] = {"epoch": epoch + 1, "steps": step}
        for i, name in enumerate(("loss", "loss_empathy", "loss_rationale")):
            record[name] = sum(item[i] for item in losses) / len(losses)
        if len(dev["level"]):
            dev_metrics = evaluate(model, dev, recipe.batch_size, device)
            record["dev_accuracy"], record["dev_macro_f1"] = (dev_metrics["accuracy"],
                                                              dev_metrics["macro_f1"])
        log.info("epoch %s: %s", epoch + 1, ", ".join(
            f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float)))
        history.append(record)
    return model, {"steps": step, "epochs": history}


def _prepare_out(out: Path) -> Path:
    """A fresh temp directory beside `out`; refuses an `out` that exists and is not empty."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EvalError(f"{out}: exists and is not empty; EPITOME training writes a new "
                        f"directory (choose another --out or move this one aside)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))


def train_classifiers(data_dir: Path, encoder: str, out: Path, tokenizer: str | None = None,
                      seed: int = DEFAULT_SEED, recipe: Recipe = Recipe(),
                      device: str | None = None) -> dict[str, Any]:
    """finetuned_{ER,EX,IP}.pth and report.json in `out` (written whole or not at all); the
    report."""
    started = time.time()
    annotations = load_annotations(data_dir)  # every row checked before anything is written
    splits = split_annotations(annotations, seed)
    tokenizer_name = tokenizer or encoder
    config = load_encoder_config(encoder)
    tok = load_tokenizer(tokenizer_name)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tmp = _prepare_out(out)
    try:
        torch.manual_seed(seed)  # the random pooler (roberta-base has none) and test encoders
        encoder_state, encoder_init = pretrained_encoder(encoder, config)
        dims: dict[str, Any] = {}
        for aspect in ASPECTS:
            data = {split: encode_rows(tok, splits[aspect][split], recipe.max_length)
                    for split in SPLITS}
            log.info("EPITOME %s: %s", aspect, ", ".join(
                f"{split} {len(data[split]['level'])}" for split in SPLITS))
            began = time.time()
            model, history = train_one(config, encoder_state, data["train"], data["dev"], recipe,
                                       seed, device)
            test = evaluate(model, data["test"], recipe.batch_size, device)
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            torch.save(state, tmp / CHECKPOINT_FILES[aspect])
            dims[aspect] = {"test": test, **history,
                            "rows": {s: len(data[s]["level"]) for s in SPLITS},
                            "seconds": round(time.time() - began, 1)}
            log.info("EPITOME %s test: accuracy %.4f, macro-F1 %.4f", aspect,
                     test["accuracy"] or 0, test["macro_f1"] or 0)
            del model
        fields = training_fields(data_dir, encoder, tokenizer_name, seed, recipe)
        report = {"encoder": encoder, "tokenizer": tokenizer_name, "encoder_init": encoder_init,
                  "data": str(data_dir), "seed": seed, "recipe": dataclasses.asdict(recipe),
                  "split": {"fractions": list(SPLIT_FRACTIONS), "by": "(sp_id, rp_id)",
                            "seed": seed},
                  "fingerprint": fingerprint(fields), "fields": fields, "device": str(device),
                  "torch": torch.__version__, "paper_source": PAPER_SOURCE,
                  "dimensions": dims, "seconds": round(time.time() - started, 1)}
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        os.chmod(tmp, 0o777 & ~_umask())
        os.replace(tmp, out)  # an empty `out` is replaced; a non-empty one was refused above
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temp directory only
        raise
    return report


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def epitome_train_stage(cfg, directory: Path) -> Path:
    """The pipeline's stage (eval.epitome.checkpoints: train): the classifiers trained once into
    `directory`/checkpoints (`directory` is named by their fingerprint), then stage.json and the
    DONE marker. Checkpoints finished by an interrupted run are kept, not retrained."""
    directory = Path(directory)
    out = directory / CHECKPOINTS
    if is_done(directory, STAGE):
        return out
    settings = cfg.eval.epitome
    fields = stage_fields(cfg)
    if not (out / REPORT).exists():
        train_classifiers(cfg.resolve(settings.train_data), cfg.local_or_name(settings.encoder),
                          out, tokenizer=cfg.local_or_name(settings.tokenizer),
                          seed=settings.train_seed)
    atomic_write_json(directory / "stage.json",
                      {"kind": STAGE, "fingerprint": fingerprint(fields), "fields": fields})
    mark_done(directory, STAGE)
    return out
