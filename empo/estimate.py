"""`empo plan`'s compute estimate: the GPU-hours of the whole graph from the data's token counts
and a training throughput (tokens per GPU-second).

Default throughput: FLOPs per token over sustained FLOP/s. Training costs ~6·N FLOPs per token for
N parameters (forward 2N + backward 4N; Kaplan et al. 2020, "Scaling Laws for Neural Language
Models", §2.1) — an upper bound for LoRA, whose frozen weights need no weight gradients, and about
what gradient checkpointing adds back. DPO adds the reference forward: 8·N. Evaluation (generation
and MMLU's log-likelihoods) costs 2·N per token. Sustained FLOP/s: an A100's 312 TFLOP/s dense
bf16 peak (NVIDIA A100 datasheet) × 35 % model FLOPs utilisation, an assumption below the 46 % PaLM
reached (Chowdhery et al. 2022, Table 3). `--throughput` replaces the training figure with a
measured one (e.g. train_log.jsonl's num_tokens over its time); the other stages scale from it.
Generation is memory-bound, so its estimate is a lower bound. EPITOME/BERTScore (RoBERTa-sized
scorers) and the CPU stages are left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from empo.config import ExperimentConfig
from empo.data.chat import eligible, target_index
from empo.data.ed import load_dialogues
from empo.models import load_tokenizer
from empo.pipeline import build_graph
from empo.stages import hook, memory_plan, stage_kind, training_kinds

PEAK_FLOPS = 312e12     # A100 dense bf16, NVIDIA datasheet
MFU = 0.35              # assumed sustained fraction of peak
MMLU_QUESTIONS = 14042  # MMLU test split
MMLU_TOKENS = 4 * 650   # per question: 4 choices x ~650 tokens of 5-shot context (approximate)
TEMPLATE_TOKENS = 5     # chat-template tokens around each turn


@dataclass
class Estimate:
    """Tokens and GPU-hours per stage kind, and where the throughput came from."""

    params: int
    throughput: float                    # training tokens per GPU-second (SFT)
    source: str
    tokens: dict[str, int] = field(default_factory=dict)       # per stage of that kind
    stages: dict[str, int] = field(default_factory=dict)       # how many such stages
    gpu_hours: dict[str, float] = field(default_factory=dict)  # all stages of that kind
    counted_with: str = ""

    @property
    def total(self) -> float:
        return sum(self.gpu_hours.values())


def _counter(cfg: ExperimentConfig) -> tuple[Any, str]:
    """A text -> token count function: the model's tokenizer, else ~4 characters per token."""
    try:
        tokenizer = load_tokenizer(cfg)
        return (lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
                "the model's tokenizer")
    except Exception:  # noqa: BLE001 - no tokenizer here (offline, not fetched): a rough count
        return (lambda text: max(1, len(text) // 4)), "~4 characters per token (no tokenizer here)"


class Corpus:
    """The experiment's train and eval dialogues and a token counter, loaded once for every
    stage's `tokens` hook."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.count, self.how = _counter(cfg)
        source = cfg.local_or_name(cfg.data.source)
        self.train = eligible(load_dialogues(source, cfg.data.train_split,
                                             cfg.data.revision).dialogues)
        test = eligible(load_dialogues(source, cfg.data.eval_split, cfg.data.revision).dialogues)
        self.test = test if cfg.data.max_eval_examples is None else \
            test[: cfg.data.max_eval_examples]

    def split(self, dialogue: Any) -> tuple[int, int]:
        """(prompt tokens, target tokens) of a dialogue."""
        turns = [self.count(t) + TEMPLATE_TOKENS for t in dialogue.turns]
        cut = target_index(dialogue)
        return sum(turns[:cut]), turns[cut]


def training_tokens(cfg: ExperimentConfig, kind: str, corpus: Corpus) -> int:
    """Tokens a training stage processes per epoch: whole dialogues, or with preference pairs
    (`sequences` 2) prompt + chosen and prompt + rejected."""
    if stage_kind(kind).sequences == 1:
        return sum(corpus.count(t) + TEMPLATE_TOKENS for d in corpus.train for t in d.turns)
    parts = [corpus.split(d) for d in corpus.train]
    mean_target = sum(t for _, t in parts) / max(1, len(parts))
    return int(sum(2 * prompt + target + mean_target for prompt, target in parts))


def generation_tokens(cfg: ExperimentConfig, kind: str, corpus: Corpus) -> int:
    """Generation: the eval prompts plus max_new_tokens per prompt."""
    prompts = sum(p for p, _ in (corpus.split(d) for d in corpus.test))
    return prompts + len(corpus.test) * cfg.eval.generation.max_new_tokens


def mmlu_tokens(cfg: ExperimentConfig, kind: str, corpus: Corpus) -> int:
    """MMLU: questions x choices x 5-shot context."""
    return (cfg.eval.mmlu.limit or MMLU_QUESTIONS) * MMLU_TOKENS


def default_throughput(params: int) -> float:
    """SFT tokens per GPU-second at MFU of the A100's bf16 peak, 6·N FLOPs per token."""
    return PEAK_FLOPS * MFU / (6 * params)


def estimate(cfg: ExperimentConfig, throughput: float | None = None) -> Estimate:
    """GPU-hours of every stage of the graph with a `tokens` hook (training, generation, MMLU):
    its tokens over the SFT rate scaled by 6 / its `flops_per_token`."""
    params = memory_plan(cfg, training_kinds()[0]).base_params
    source = ("--throughput" if throughput else
              f"6N FLOPs/token (Kaplan et al. 2020) at {MFU:.0%} of an A100's "
              f"{PEAK_FLOPS / 1e12:.0f} TFLOP/s bf16 peak")
    sft_rate = throughput or default_throughput(params)
    corpus = Corpus(cfg)
    result = Estimate(params, sft_rate, source, counted_with=corpus.how)
    for stage in build_graph(cfg):
        if stage_kind(stage.kind).tokens:
            result.stages[stage.kind] = result.stages.get(stage.kind, 0) + 1
    for kind, n in result.stages.items():
        entry = stage_kind(kind)
        result.tokens[kind] = hook(entry.tokens)(cfg, kind, corpus)
        epochs = getattr(cfg, kind).num_train_epochs if entry.trains else 1
        seconds = result.tokens[kind] * epochs / (sft_rate * 6 / entry.flops_per_token)
        result.gpu_hours[kind] = n * seconds / 3600
    return result


def estimate_text(result: Estimate) -> str:
    lines = [f"compute estimate (whole graph): {result.total:.1f} GPU-hours",
             f"  throughput: {result.throughput:,.0f} SFT tokens/GPU-s ({result.source}); other "
             f"stages x6/their FLOPs per token (with a reference 8N, generation and MMLU 2N)",
             f"  tokens counted with {result.counted_with}; base model {result.params / 1e9:.2f} B "
             "params"]
    for kind, hours in result.gpu_hours.items():
        lines.append(f"  {kind:9} {result.stages[kind]:3} x {result.tokens[kind]:>12,} tokens "
                     f"-> {hours:8.2f} GPU-h")
    return "\n".join(lines)
