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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from empo.config import ExperimentConfig

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
        from empo.models import load_tokenizer

        tokenizer = load_tokenizer(cfg)
        return (lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
                "the model's tokenizer")
    except Exception:  # noqa: BLE001 - no tokenizer here (offline, not fetched): a rough count
        return (lambda text: max(1, len(text) // 4)), "~4 characters per token (no tokenizer here)"


def token_counts(cfg: ExperimentConfig) -> tuple[dict[str, int], str]:
    """Tokens one stage of each kind processes per epoch: sft (whole dialogues), dpo (prompt +
    chosen and prompt + rejected), generate (prompts + max_new_tokens), mmlu."""
    from empo.data.chat import eligible, target_index
    from empo.data.ed import load_dialogues

    count, how = _counter(cfg)
    train = eligible(load_dialogues(cfg.local_or_name(cfg.data.source), cfg.data.train_split,
                                    cfg.data.revision).dialogues)
    test = eligible(load_dialogues(cfg.local_or_name(cfg.data.source), cfg.data.eval_split,
                                   cfg.data.revision).dialogues)
    if cfg.data.max_eval_examples is not None:
        test = test[: cfg.data.max_eval_examples]

    def split(d: Any) -> tuple[int, int]:
        turns = [count(t) + TEMPLATE_TOKENS for t in d.turns]
        cut = target_index(d)
        return sum(turns[:cut]), turns[cut]

    sft = sum(count(t) + TEMPLATE_TOKENS for d in train for t in d.turns)
    parts = [split(d) for d in train]
    mean_target = sum(t for _, t in parts) / max(1, len(parts))
    dpo = int(sum(2 * prompt + target + mean_target for prompt, target in parts))
    generate = sum(p for p, _ in (split(d) for d in test)) + \
        len(test) * cfg.eval.generation.max_new_tokens
    mmlu = (cfg.eval.mmlu.limit or MMLU_QUESTIONS) * MMLU_TOKENS
    return {"sft": sft, "dpo": dpo, "generate": generate, "mmlu": mmlu}, how


def default_throughput(params: int) -> float:
    """SFT tokens per GPU-second at MFU of the A100's bf16 peak, 6·N FLOPs per token."""
    return PEAK_FLOPS * MFU / (6 * params)


def estimate(cfg: ExperimentConfig, throughput: float | None = None) -> Estimate:
    """GPU-hours of every stage of the graph that uses a GPU."""
    from empo.pipeline import build_graph
    from empo.train.memory import plan_memory

    params = plan_memory(cfg, "sft").base_params
    source = ("--throughput" if throughput else
              f"6N FLOPs/token (Kaplan et al. 2020) at {MFU:.0%} of an A100's "
              f"{PEAK_FLOPS / 1e12:.0f} TFLOP/s bf16 peak")
    sft_rate = throughput or default_throughput(params)
    rates = {"sft": sft_rate, "dpo": sft_rate * 6 / 8, "generate": sft_rate * 3,
             "mmlu": sft_rate * 3}
    epochs = {"sft": cfg.sft.num_train_epochs, "dpo": cfg.dpo.num_train_epochs}
    tokens, how = token_counts(cfg)
    result = Estimate(params, sft_rate, source, tokens, counted_with=how)
    for stage in build_graph(cfg):
        if stage.kind in rates:
            result.stages[stage.kind] = result.stages.get(stage.kind, 0) + 1
    for kind, n in result.stages.items():
        seconds = tokens[kind] * epochs.get(kind, 1) / rates[kind]
        result.gpu_hours[kind] = n * seconds / 3600
    return result


def estimate_text(result: Estimate) -> str:
    lines = [f"compute estimate (whole graph): {result.total:.1f} GPU-hours",
             f"  throughput: {result.throughput:,.0f} SFT tokens/GPU-s ({result.source}); DPO "
             f"x6/8, generation and MMLU x3 (2N FLOPs/token)",
             f"  tokens counted with {result.counted_with}; base model {result.params / 1e9:.2f} B "
             "params"]
    for kind, hours in result.gpu_hours.items():
        lines.append(f"  {kind:9} {result.stages[kind]:3} x {result.tokens[kind]:>12,} tokens "
                     f"-> {hours:8.2f} GPU-h")
    return "\n".join(lines)
