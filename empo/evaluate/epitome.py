"""diff-EPITOME (DESIGN §4): the published EPITOME bi-encoders (ER, EX, IP) and the metric.

The model mirrors `BiEncoderAttentionWithRationaleClassification` of Sharma et al. (2020) key for
key, so the published `finetuned_{ER,EX,IP}.pth` state dicts load strictly. `EpitomeScorer` is the
batched scorer (seekers encoded once when the three checkpoints share the frozen seeker encoder);
`reference_logits` scores one pair at a time, unbatched, exactly like the paper's code, and is the
yardstick of the tests and the benchmark.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformers import RobertaConfig, RobertaModel

from empo.errors import EvalError
from empo.reader import ReadError, open_regular

ASPECTS = ("ER", "EX", "IP")
CHECKPOINT_FILES = {aspect: f"finetuned_{aspect}.pth" for aspect in ASPECTS}
MAX_LENGTH = 64  # tokens, special tokens included (EPITOME's max_len)
PADDING_MODES = ("none", "max_length")
SEEKER_PREFIX = "seeker_encoder."
# Non-persistent buffer that checkpoints saved with transformers < 4.31 still carry; not a weight.
IGNORED_SUFFIXES = ("embeddings.position_ids",)


class Norm(nn.Module):
    """EPITOME's learnable normalisation (`norm.alpha`, `norm.bias`); part of the checkpoints but
    never applied in the original forward pass, so neither here."""

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.eps = eps


class CrossAttention(nn.Module):
    """One-head scaled dot-product attention from response positions to seeker positions."""

    def __init__(self, hidden: int):
        super().__init__()
        self.q_linear = nn.Linear(hidden, hidden)
        self.v_linear = nn.Linear(hidden, hidden)
        self.k_linear = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query [B, Lq, H], key/value [B, Lk, H]; key_mask [B, Lk] (1 = attend) or None (as
        in the original)."""
        q, k, v = self.q_linear(query), self.k_linear(key), self.v_linear(value)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        if key_mask is not None:
            scores = scores.masked_fill(key_mask[:, None, :] == 0, torch.finfo(scores.dtype).min)
        return self.out(scores.softmax(dim=-1) @ v)


class ClassificationHead(nn.Module):
    """dropout -> dense -> ReLU -> dropout -> out_proj over the response's first position (3
    empathy levels); dropout acts in training only (`empo.evaluate.epitome_train`)."""

    def __init__(self, hidden: int, levels: int = 3, dropout: float = 0.1):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, levels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.dense(self.dropout(features)))
        return self.out_proj(self.dropout(hidden))


class Encoder(nn.Module):
    """Holds a RobertaModel under `.roberta`, as the original SeekerEncoder/ResponderEncoder did."""

    def __init__(self, config: RobertaConfig):
        super().__init__()
        self.roberta = RobertaModel(config, add_pooling_layer=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.roberta(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class EpitomeClassifier(nn.Module):
    """One EPITOME classifier (ER, EX or IP) in the published parameter layout. `dropout` (no
    parameters, active in train mode only) is the original's `hidden_dropout_prob`: on the
    cross-attention output, before the rationale head and inside the empathy head."""

    def __init__(self, config: RobertaConfig, seeker_encoder: Encoder | None = None,
                 dropout: float = 0.1):
        super().__init__()
        hidden = config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.rationale_classifier = nn.Linear(hidden, 2)
        self.attn = CrossAttention(hidden)
        self.norm = Norm(hidden)
        self.empathy_classifier = ClassificationHead(hidden, 3, dropout)
        self.seeker_encoder = seeker_encoder if seeker_encoder is not None else Encoder(config)
        self.responder_encoder = Encoder(config)

    def forward(self, seeker_ids: torch.Tensor, response_ids: torch.Tensor,
                seeker_mask: torch.Tensor | None = None, response_mask: torch.Tensor | None = None,
                cross_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The original forward: (empathy logits [B, 3], rationale logits [B, L, 2])."""
        seeker = self.seeker_encoder(seeker_ids, seeker_mask)
        response = self.responder_encoder(response_ids, response_mask)
        response = response + self.dropout(self.attn(response, seeker, seeker, key_mask=cross_mask))
        return (self.empathy_classifier(response[:, 0, :]),
                self.rationale_classifier(self.dropout(response)))

    def empathy_logits(self, seeker_states: torch.Tensor, response_states: torch.Tensor,
                       cross_mask: torch.Tensor | None) -> torch.Tensor:
        """Empathy logits from encoded states; only the first response position is attended from."""
        first = response_states[:, :1, :]
        first = first + self.dropout(self.attn(first, seeker_states, seeker_states,
                                               key_mask=cross_mask))
        return self.empathy_classifier(first[:, 0, :])


# ----------------------------------------------------------------------------- loading


def expected_shapes(config: RobertaConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of one classifier and its shape, computed on the meta device."""
    with torch.device("meta"):
        model = EpitomeClassifier(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
                     source: str) -> None:
    """Strict key and shape check; the error lists missing, unexpected and mis-shaped keys."""
    keys = {k for k in state if not k.endswith(IGNORED_SUFFIXES)}
    missing = sorted(set(expected) - keys)
    unexpected = sorted(keys - set(expected))
    mismatched = [f"{k} (checkpoint {list(state[k].shape)}, model {list(expected[k])})"
                  for k in sorted(keys & set(expected)) if tuple(state[k].shape) != expected[k]]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for name, items in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shape mismatches", mismatched)):
        if items:
            more = f", ... ({len(items) - 8} more)" if len(items) > 8 else ""
            parts.append(f"{len(items)} {name}: {', '.join(items[:8])}{more}")
    hint = " (does the encoder config match the checkpoints?)" if mismatched else ""
    raise EvalError(f"{source}: not an EPITOME checkpoint in the published layout: "
                    f"{'; '.join(parts)}{hint}")


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True), memory-mapped when the file format allows it; a file that
    is not a regular one (FIFO, device) is refused before torch opens it."""
    try:
        os.close(open_regular(Path(path)))
    except ReadError as err:
        raise EvalError(str(err)) from None
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (pre-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except EOFError:  # torch's answer to an empty or cut-off legacy file: "Ran out of input"
        raise EvalError(f"{path}: not a torch checkpoint (empty or truncated; expected a "
                        "state dict saved with torch.save)") from None
    except Exception as err:  # unpickling errors come in many types
        raise EvalError(f"{path}: cannot load as a state dict "
                        f"({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EvalError(f"{path}: expected a plain state dict of tensors")
    return state


def seeker_groups(states: Mapping[str, Mapping[str, torch.Tensor]]) -> list[list[str]]:
    """Aspects grouped by identical seeker-encoder weights (the original training froze them)."""
    groups: list[list[str]] = []
    for aspect, state in states.items():
        seeker = {k: v for k, v in state.items() if k.startswith(SEEKER_PREFIX)}
        for group in groups:
            other = states[group[0]]
            if all(torch.equal(v, other[k]) for k, v in seeker.items()):
                group.append(aspect)
                break
        else:
            groups.append([aspect])
    return groups


def classifiers_from_state_dicts(states: Mapping[str, Mapping[str, torch.Tensor]],
                                 config: RobertaConfig, sources: Mapping[str, str] | None = None
                                 ) -> dict[str, EpitomeClassifier]:
    """Build one classifier per aspect, strictly loaded; aspects with equal seeker weights share
    one seeker-encoder module."""
    expected = expected_shapes(config)
    for aspect, state in states.items():
        check_state_dict(state, expected, (sources or {}).get(aspect, aspect))
    classifiers: dict[str, EpitomeClassifier] = {}
    for group in seeker_groups(states):
        shared: Encoder | None = None
        for aspect in group:
            model = EpitomeClassifier(config, seeker_encoder=shared)
            weights = {k: v for k, v in states[aspect].items() if not k.endswith(IGNORED_SUFFIXES)}
            if shared is not None:  # already loaded from the group's first checkpoint
                weights = {k: v for k, v in weights.items() if not k.startswith(SEEKER_PREFIX)}
            missing, unexpected = model.load_state_dict(weights, strict=False)
            if shared is not None:
                missing = [k for k in missing if not k.startswith(SEEKER_PREFIX)]
            assert not missing and not unexpected, (missing, unexpected)  # checked above
            shared = model.seeker_encoder
            classifiers[aspect] = model.eval()
    return {aspect: classifiers[aspect] for aspect in states}


def load_classifiers(checkpoints: Path, config: RobertaConfig) -> dict[str, EpitomeClassifier]:
    """finetuned_{ER,EX,IP}.pth from a directory (each must exist)."""
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        raise EvalError(f"{checkpoints}: EPITOME checkpoint directory does not exist")
    paths = {aspect: checkpoints / name for aspect, name in CHECKPOINT_FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise EvalError(f"{checkpoints}: missing EPITOME checkpoint(s) {', '.join(missing)} "
                        f"(need {', '.join(CHECKPOINT_FILES.values())})")
    states = {aspect: load_state_dict_file(path) for aspect, path in paths.items()}
    return classifiers_from_state_dicts(states, config, {a: str(p) for a, p in paths.items()})


def load_encoder_config(encoder: str):
    """The RobertaConfig of the encoders (Hub id or local directory)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(encoder)
    except (OSError, ValueError) as err:
        raise EvalError(f"cannot load the EPITOME encoder config '{encoder}' ({err}); "
                        f"offline, give a local directory with config.json") from None
    if not isinstance(config, RobertaConfig):
        raise EvalError(f"EPITOME encoder '{encoder}' is a {type(config).__name__}, not RoBERTa")
    return config


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise EvalError(f"cannot load the EPITOME tokenizer '{name}' ({err}); "
                        f"offline, give a local tokenizer directory") from None


# ----------------------------------------------------------------------------- scoring


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Lowercased, truncated to 64 tokens (special tokens included), unpadded."""
    return tokenizer([t.lower() for t in texts], truncation=True, max_length=MAX_LENGTH,
                     add_special_tokens=True)["input_ids"]


def pad(sequences: Sequence[Sequence[int]], pad_id: int, length: int | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to `length` (default: the longest) -> (ids, attention mask)."""
    length = length or max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


@dataclass
class EpitomeLevels:
    """Levels 0/1/2 per aspect for predictions and references, in input order."""

    pred: dict[str, list[int]]
    ref: dict[str, list[int]]


def diff_epitome(levels: EpitomeLevels) -> dict[str, float | int]:
    """diff_x = mean (pred level - ref level)^2, mean levels pred_x, ref_x, and epitome_n
    (not `n`: the aggregate table already has an `n` column, the number of seeds)."""
    metrics: dict[str, float | int] = {}
    n = 0
    for aspect in levels.pred:
        pred, ref = levels.pred[aspect], levels.ref[aspect]
        n = len(pred)
        name = aspect.lower()
        metrics[f"diff_{name}"] = sum((p - r) ** 2 for p, r in zip(pred, ref)) / n
        metrics[f"pred_{name}"] = sum(pred) / n
        metrics[f"ref_{name}"] = sum(ref) / n
    metrics["epitome_n"] = n
    return metrics


class EpitomeScorer:
    """Batched EPITOME scoring. padding='none' equals scoring each pair alone unpadded (seeker
    padding masked out of the cross-attention); 'max_length' pads to 64, no cross mask."""

    def __init__(self, classifiers: Mapping[str, EpitomeClassifier], tokenizer,
                 padding: str = "none", batch_size: int = 32, device: str | None = None,
                 progress: bool = False):
        if padding not in PADDING_MODES:
            raise EvalError(f"EPITOME padding '{padding}': allowed {', '.join(PADDING_MODES)}")
        if batch_size < 1:
            raise EvalError(f"EPITOME batch size must be >= 1, got {batch_size}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.classifiers = {a: c.to(self.device).eval() for a, c in classifiers.items()}
        self.tokenizer = tokenizer
        self.padding = padding
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id
        self.progress = progress

    @property
    def seeker_encoders(self) -> int:
        """How many distinct seeker encoders run per batch (1 when the checkpoints share it)."""
        return len({id(c.seeker_encoder) for c in self.classifiers.values()})

    def _pad(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        length = MAX_LENGTH if self.padding == "max_length" else None
        ids, mask = pad(sequences, self.pad_id, length)
        return ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def logits(self, seekers: Sequence[str], responses: Sequence[Sequence[str]]
               ) -> dict[str, torch.Tensor]:
        """Empathy logits [N, k, 3] per aspect for N seekers, each with k responses."""
        n, k = len(seekers), len(responses[0]) if responses else 0
        seeker_ids = encode(self.tokenizer, seekers)
        response_ids = encode(self.tokenizer, [r for group in responses for r in group])
        response_ids = [response_ids[i * k:(i + 1) * k] for i in range(n)]
        # batches of similar lengths (responses dominate the cost), original order restored below
        order = sorted(range(n), key=lambda i: (max(len(r) for r in response_ids[i]),
                                                len(seeker_ids[i])))
        out = {a: torch.empty((n, k, 3)) for a in self.classifiers}
        starts = range(0, n, self.batch_size)
        for start in tqdm(starts, desc="epitome", unit="batch", file=sys.stderr,
                          disable=not self.progress):
            rows = order[start:start + self.batch_size]
            s_ids, s_mask = self._pad([seeker_ids[i] for i in rows])
            # responses flattened response-major: [resp 0 of every row, resp 1 of every row, ...]
            r_ids, r_mask = self._pad([response_ids[i][j] for j in range(k) for i in rows])
            cross = s_mask.repeat(k, 1) if self.padding == "none" else None
            seeker_states: dict[int, torch.Tensor] = {}
            for aspect, clf in self.classifiers.items():
                key = id(clf.seeker_encoder)
                if key not in seeker_states:
                    seeker_states[key] = clf.seeker_encoder(s_ids, s_mask).repeat(k, 1, 1)
                states = clf.responder_encoder(r_ids, r_mask)
                logits = clf.empathy_logits(seeker_states[key], states, cross)
                out[aspect][rows] = logits.float().cpu().view(k, len(rows), 3).transpose(0, 1)
        return out

    def pair_levels(self, seekers: Sequence[str], responses: Sequence[str]) -> dict[str, list[int]]:
        """Level of each (seeker, response) pair per aspect."""
        logits = self.logits(seekers, [[r] for r in responses])
        return {a: v[:, 0].argmax(-1).tolist() for a, v in logits.items()}

    def score(self, seekers: Sequence[str], predictions: Sequence[str],
              references: Sequence[str]) -> EpitomeLevels:
        """Levels of (seeker, prediction) and (seeker, reference), seekers encoded once."""
        if not (len(seekers) == len(predictions) == len(references)):
            raise EvalError("EPITOME: seekers, predictions and references differ in length")
        if not seekers:
            raise EvalError("EPITOME: nothing to score")
        logits = self.logits(seekers, list(zip(predictions, references)))
        levels = {a: v.argmax(-1) for a, v in logits.items()}
        return EpitomeLevels(pred={a: v[:, 0].tolist() for a, v in levels.items()},
                             ref={a: v[:, 1].tolist() for a, v in levels.items()})


@torch.inference_mode()
def reference_logits(classifiers: Mapping[str, EpitomeClassifier], tokenizer,
                     seekers: Sequence[str], responses: Sequence[str], padding: str = "none"
                     ) -> dict[str, torch.Tensor]:
    """One pair at a time through the original forward (no batching, no cross mask): [N, 3]."""
    out: dict[str, list[torch.Tensor]] = {a: [] for a in classifiers}
    length = MAX_LENGTH if padding == "max_length" else None
    for seeker, response in zip(seekers, responses):
        s_ids, s_mask = pad(encode(tokenizer, [seeker]), tokenizer.pad_token_id, length)
        r_ids, r_mask = pad(encode(tokenizer, [response]), tokenizer.pad_token_id, length)
        for aspect, clf in classifiers.items():
            device = next(clf.parameters()).device
            empathy, _ = clf(s_ids.to(device), r_ids.to(device), s_mask.to(device),
                             r_mask.to(device), cross_mask=None)
            out[aspect].append(empathy[0].float().cpu())
    return {a: torch.stack(v) if v else torch.empty((0, 3)) for a, v in out.items()}


def load_scorer(checkpoints: Path, encoder: str = "roberta-base", tokenizer: str | None = None,
                padding: str = "none", batch_size: int = 32, device: str | None = None,
                progress: bool = False) -> EpitomeScorer:
    """The batched scorer from a checkpoint directory and an encoder config/tokenizer."""
    if padding not in PADDING_MODES:
        raise EvalError(f"EPITOME padding '{padding}': allowed {', '.join(PADDING_MODES)}")
    config = load_encoder_config(encoder)
    classifiers = load_classifiers(Path(checkpoints), config)
    return EpitomeScorer(classifiers, load_tokenizer(tokenizer or encoder), padding=padding,
                         batch_size=batch_size, device=device, progress=progress)
