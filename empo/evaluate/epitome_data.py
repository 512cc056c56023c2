"""The EPITOME Reddit annotations (Sharma et al., 2020): reading and checking the three CSVs,
locating rationale spans, the train/dev/test split and the data fingerprint. Pure Python (no torch),
so the pipeline can fingerprint the training stage on a login node.

Files (`behavioral-data/Empathy-Mental-Health`, dataset/): one per communication mechanism, columns
sp_id, rp_id, seeker_post, response_post, level (0/1/2), rationales ('|'-separated response
excerpts). The original `src/process_data.py` found each rationale with an unescaped regex over a
decoded re-tokenisation and silently skipped those it could not find; here a rationale must be
found (see `find_span`) or the file is rejected, naming the row.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import html
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from empo.errors import DataError

FILES = {"ER": "emotional-reactions-reddit.csv", "EX": "explorations-reddit.csv",
         "IP": "interpretations-reddit.csv"}
COLUMNS = ("sp_id", "rp_id", "seeker_post", "response_post", "level", "rationales")
LEVELS = ("0", "1", "2")
SPLITS = ("train", "dev", "test")
# Not in the original code, which takes ready-made train/dev/test files (src/train.py
# --train_path/--dev_path/--test_path); Sharma et al. (2020, §5) describe a random 75:5:20 split.
SPLIT_FRACTIONS = (0.75, 0.05, 0.20)
DEFAULT_SEED = 12  # src/train.py --seed_val default
_ENTITY = re.compile(r"&(?:amp;)*(?:[a-zA-Z][a-zA-Z0-9]*|#[0-9]+|#[xX][0-9a-fA-F]+);")
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\ufeff"}
# The annotation export dropped the words "reddit"/"subreddit" from rationales (not from
# responses): "browsing s like" for "browsing subreddits like".
_DROPPED_WORD = re.compile(r"subreddit|reddit")
_EDGE_PUNCTUATION = re.compile(r"^[^\w]+|[^\w]+$")


@dataclass(frozen=True)
class Annotation:
    """One annotated (seeker post, response) pair of one mechanism. `spans` are the rationales'
    character spans in `response.lower()` (the text the tokenizer sees)."""

    sp_id: str
    rp_id: str
    seeker: str
    response: str
    level: int
    spans: tuple[tuple[int, int], ...]
    row: int  # 1-based data row of the file (the header is row 0)

    @property
    def pair(self) -> tuple[str, str]:
        return self.sp_id, self.rp_id


def _normalized(text: str, unescape: bool) -> tuple[str, list[tuple[int, int]]]:
    """Text compared for matching (HTML entities decoded when `unescape`, whitespace, invisible
    characters and the words reddit/subreddit removed) and each kept character's source span."""
    chars: list[str] = []
    where: list[tuple[int, int]] = []
    i = 0
    while i < len(text):
        match = _ENTITY.match(text, i) if unescape else None
        if match:
            piece, end = match.group(), match.end()
            while html.unescape(piece) != piece:  # "&amp;nbsp;" is escaped twice
                piece = html.unescape(piece)
        else:
            piece, end = text[i], i + 1
        for char in piece:
            if not (char.isspace() or char in _INVISIBLE):
                chars.append(char)
                where.append((i, end))
        i = end
    joined = "".join(chars)
    keep = [True] * len(chars)
    for match in _DROPPED_WORD.finditer(joined):
        keep[match.start():match.end()] = [False] * (match.end() - match.start())
    return ("".join(c for c, k in zip(chars, keep) if k), [w for w, k in zip(where, keep) if k])


def find_span(response: str, rationale: str) -> tuple[int, int] | None:
    """The character span of the first occurrence of `rationale` in `response` (both lowercased),
    ignoring whitespace and HTML escaping, or None. Entities are decoded first, then the raw text
    is tried, then the rationale without leading/trailing punctuation (a rationale cut inside an
    entity: ";No matter" for "&gt;No matter")."""
    for needle_text in (rationale, _EDGE_PUNCTUATION.sub("", rationale)):
        for unescape in (True, False):
            text, where = _normalized(response, unescape)
            needle, _ = _normalized(needle_text, unescape)
            at = text.find(needle) if needle else -1
            if at >= 0:
                return where[at][0], where[at + len(needle) - 1][1]
    return None


def read_annotations(path: Path) -> list[Annotation]:
    """Every row of one mechanism's CSV; DataError naming the file and row on bad input."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: EPITOME annotation file not found")
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise DataError(f"{path}: empty file (expected the header {','.join(COLUMNS)})")
        missing = [c for c in COLUMNS if c not in reader.fieldnames]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)} "
                            f"(header: {','.join(reader.fieldnames)}; need {','.join(COLUMNS)})")
        rows = []
        for number, raw in enumerate(reader, start=1):
            where = f"{path} row {number} (line {reader.line_num})"
            if any(raw.get(c) is None for c in COLUMNS):
                raise DataError(f"{where}: too few fields")
            level = raw["level"].strip()
            if level not in LEVELS:
                raise DataError(f"{where}: unknown level {raw['level']!r} (allowed 0, 1, 2)")
            response = raw["response_post"].strip()
            spans = []
            for rationale in raw["rationales"].split("|"):
                if not rationale.strip():
                    continue
                span = find_span(response.lower(), rationale.lower())
                if span is None:
                    raise DataError(f"{where}: rationale {rationale.strip()[:60]!r} not found in "
                                    f"the response")
                spans.append(span)
            rows.append(Annotation(raw["sp_id"], raw["rp_id"], raw["seeker_post"].strip(),
                                   response, int(level), tuple(spans), number))
    if not rows:
        raise DataError(f"{path}: no annotated rows after the header")
    return rows


def load_annotations(data_dir: Path) -> dict[str, list[Annotation]]:
    """The three mechanisms' annotations from `data_dir`, all checked before anything is used."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: EPITOME annotation directory does not exist")
    missing = [name for name in FILES.values() if not (data_dir / name).is_file()]
    if missing:
        raise DataError(f"{data_dir}: missing {', '.join(missing)} "
                        f"(need {', '.join(FILES.values())})")
    return {aspect: read_annotations(data_dir / name) for aspect, name in FILES.items()}


def split_pairs(pairs, seed: int = DEFAULT_SEED) -> dict[tuple[str, str], str]:
    """(sp_id, rp_id) -> train/dev/test: a seeded shuffle of the sorted distinct pairs cut
    75:5:20, so a pair's rows (and its rows in the other mechanisms' files) share a split."""
    ordered = sorted(set(pairs))
    random.Random(seed).shuffle(ordered)
    n_train = round(len(ordered) * SPLIT_FRACTIONS[0])
    n_dev = round(len(ordered) * SPLIT_FRACTIONS[1])
    return {pair: ("train" if i < n_train else "dev" if i < n_train + n_dev else "test")
            for i, pair in enumerate(ordered)}


def split_annotations(annotations: dict[str, list[Annotation]], seed: int = DEFAULT_SEED
                      ) -> dict[str, dict[str, list[Annotation]]]:
    """aspect -> split -> rows, one split of the pairs of all three files."""
    assignment = split_pairs([a.pair for rows in annotations.values() for a in rows], seed)
    return {aspect: {split: [a for a in rows if assignment[a.pair] == split] for split in SPLITS}
            for aspect, rows in annotations.items()}


def data_fingerprint(data_dir: Path) -> str:
    """sha256 of the three files' contents (not their paths)."""
    digest = hashlib.sha256()
    for aspect, name in FILES.items():
        path = Path(data_dir) / name
        if not path.is_file():
            raise DataError(f"{data_dir}: missing {name} (need {', '.join(FILES.values())})")
        digest.update(f"{aspect}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- recipe and identity


@dataclass(frozen=True)
class Recipe:
    """The original training recipe (behavioral-data/Empathy-Mental-Health at 0e11f98); the file
    and line each value comes from is noted beside it."""

    learning_rate: float = 2e-5   # src/train.py --lr default; README's Reddit commands --lr=2e-5
    adam_epsilon: float = 1e-8    # src/train.py: AdamW(model.parameters(), lr=args.lr, eps=1e-8)
    weight_decay: float = 0.0     # transformers 2.7 AdamW default (requirements.txt pins 2.7.0)
    epochs: int = 4               # src/train.py --epochs default
    batch_size: int = 32          # src/train.py --batch_size default; README commands too
    max_length: int = 64          # src/train.py --max_len default (seeker and response, padded)
    # README's commands for the Reddit files pass --lambda_EI=1.0 --lambda_RE=0.5; src/train.py's
    # own defaults are 0.5 and 0.5. The README's are the published models' (a documented command).
    lambda_ei: float = 1.0
    lambda_re: float = 0.5
    dropout: float = 0.1          # src/train.py --dropout -> hidden_dropout_prob of the bi-encoder
    max_grad_norm: float = 1.0    # src/train.py: clip_grad_norm_(model.parameters(), 1.0)
    warmup_steps: int = 0         # src/train.py: get_linear_schedule_with_warmup(0, total)
    head_init_std: float = 0.02   # src/models/models.py _init_weights initializer_range
    train_seeker_encoder: bool = False  # src/train.py: "Do not finetune seeker encoder"
    max_steps: int | None = None  # not in the original: a cap for tests and smoke runs


def encoder_identity(encoder: str) -> str:
    """A local encoder directory by content (config, tokenizer files; weight files by name and
    size, so a login node need not read gigabytes), a Hub id by name."""
    path = Path(encoder)
    if not path.is_dir():
        return encoder
    digest = hashlib.sha256()
    for item in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(item.name.encode() + b"\0")
        if item.suffix in (".json", ".txt", ".model", ".jinja"):
            digest.update(item.read_bytes())
        else:
            digest.update(str(item.stat().st_size).encode())
    return "sha256:" + digest.hexdigest()


def training_fields(data_dir: Path, encoder: str, tokenizer: str, seed: int,
                    recipe: Recipe) -> dict[str, Any]:
    """What the trained classifiers depend on: data and encoder by content, seed, recipe."""
    return {"data": data_fingerprint(data_dir), "encoder": encoder_identity(encoder),
            "tokenizer": encoder_identity(tokenizer), "seed": seed,
            "recipe": dataclasses.asdict(recipe)}


def fingerprint(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


TRAIN = "train"  # eval.epitome.checkpoints value: train the classifiers in the pipeline
STAGE = "epitome_train"
CHECKPOINTS = "checkpoints"  # the trained files, inside the stage's directory


def stage_fields(cfg) -> dict[str, Any]:
    """The training fields of an experiment's `eval.epitome` (checkpoints: train)."""

    settings = cfg.eval.epitome
    if not settings.train_data:
        raise DataError("eval.epitome.checkpoints is 'train' but eval.epitome.train_data is not set")
    return training_fields(cfg.resolve(settings.train_data), cfg.local_or_name(settings.encoder),
                           cfg.local_or_name(settings.tokenizer), settings.train_seed, Recipe())


def trained_dir(cfg) -> Path:
    """results/<experiment>/epitome_train/<fingerprint>: one per data, encoder, seed and recipe,
    shared by every seed and variant; a changed input trains into a new directory. The
    checkpoints are in its `checkpoints/`."""
    return cfg.experiment_dir / STAGE / fingerprint(stage_fields(cfg))[:12]
