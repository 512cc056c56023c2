"""Typed experiment config: YAML + dotted overrides -> validated `ExperimentConfig` + stable hash.

Sections mirror the paper's setup (DESIGN §2). Every field has the paper's value as its default
where the paper states one. Only the standard library and PyYAML are imported here, so the CLI and
the launcher stay instant on a login node.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import yaml

from empo.errors import ConfigError
from empo.executors import EXECUTORS, SlurmOptions
from empo.metrics import metric_stages
from empo.options import attention_problem
from empo.trainer_fields import REFUSED, trl_fields
from empo.validate import (BATCH, SEED_LIMIT, STEPS, Range, check_name, check_override_text,
                           check_range, check_text, field_metadata, home_path, load_yaml,
                           read_text)

SEVEN_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HASH_EXCLUDED = ("seeds", "cluster")  # neither changes what a run computes


@dataclass
class ModelConfig:
    """The base model."""

    name_or_path: str = field(default="alignment-handbook/zephyr-7b-sft-full", metadata={
        "help": "Hub id or local directory of the base causal LM (paper: zephyr-7b-sft-full)."})
    dtype: Literal["bfloat16", "float16", "float32"] = field(default="bfloat16", metadata={
        "help": "weights and training precision (paper: bf16)."})
    attn_implementation: str = field(default="sdpa", metadata={
        "help": "transformers attention (sdpa, eager, flash_attention_2, ...) or a Hub kernel "
                "repo (org/repo[@rev][:function], the kernels package); flash needs a CUDA GPU "
                "and flash-attn or kernels (refused otherwise).",
        "allowed": attention_problem})
    chat_template: str | None = field(default=None, metadata={
        "help": "None = the tokenizer's own template; else a .jinja path to use instead."})
    architecture: str | None = field(default="empo:models/mistral-7b.json", metadata={
        "help": "a transformers config JSON used by `empo plan` without loading weights "
                "(default: Mistral-7B's, shipped in the package)."})
    add_bos: bool | str = field(default="auto", metadata={
        "help": "BOS before every training and generation sequence, put there by the chat "
                "template so training and generation agree; auto = what the tokenizer's own "
                "add_special_tokens does (`<s>` for Zephyr/Mistral). Exactly one, never two "
                "(paper: silent).",
        "allowed": lambda value: (None if value in ("auto", True, False)
                                  else "must be auto, true or false")})
    quantization: Literal["none", "nf4"] = field(default="none", metadata={
        "help": "nf4 = the frozen base loaded in 4-bit NF4 with bitsandbytes, QLoRA (paper: "
                "silent, bf16 training; the authors' code: nf4)."})



@dataclass
class DataConfig:
    """EmpatheticDialogues and the theory-driven preference pairs."""

    source: str = field(default="Estwld/empathetic_dialogues_llm", metadata={
        "help": "raw ED CSV directory (train/valid/test.csv) or a Hub dataset id in message form."})
    revision: str | None = field(default=None, metadata={
        "help": "Hub revision (commit, tag or branch) of a Hub source; None = the default branch."})
    train_split: str = field(default="train", metadata={"help": "split used for training."})
    eval_split: str = field(default="test", metadata={
        "help": "split used for generation + metrics."})
    system_prompt: str | None = field(default=None, metadata={
        "help": "system message of every stage that does not set its own `system_prompt` (sft, "
                "dpo, eval); None or \"\" = none (paper: silent; the authors' code: see the "
                "preset)."})
    emotion_table: str = field(default="empo:emotions/plutchik.tsv", metadata={
        "help": "TSV of emotion -> opposite (default: paper Table 2, shipped in the package)."})
    sampling: Literal["balanced", "uniform"] = field(default="balanced", metadata={
        "help": "draw of the rejected responses: balanced = without replacement, cycling the "
                "opposite group; uniform = with replacement."})
    max_eval_examples: int | None = field(default=None, metadata={
        "help": "evaluate on the first N eval dialogues only (None = all).",
        "range": Range(1, 10**9)})



@dataclass
class LoraConfig:
    """peft LoraConfig fields (paper: r=1024, alpha=256 — large rank, alpha ≈ r/4)."""

    r: int = field(default=1024, metadata={"help": "LoRA rank (paper: 1024).",
                                           "range": Range(1, 65_536)})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA scaling alpha (paper: 256).",
                                                   "range": Range(1, 1_000_000)})
    lora_dropout: float = field(default=0.05, metadata={
        "help": "dropout on the input of the LoRA layers.", "range": Range(0, 0.99)})
    target_modules: list[str] = field(default_factory=lambda: list(SEVEN_PROJECTIONS), metadata={
        "help": "modules that get a LoRA adapter (default: the seven attention and MLP "
                "projections)."})
    bias: str = field(default="none", metadata={"help": "peft's bias: none, all or lora_only."})
    use_rslora: bool = field(default=False, metadata={
        "help": "rank-stabilized LoRA: scale by alpha/sqrt(r) instead of alpha/r."})
    modules_to_save: list[str] = field(default_factory=list, metadata={
        "help": "modules trained in full and saved with the adapter (e.g. [embed_tokens, "
                "lm_head])."})



@dataclass
class TrainConfig:
    """Fields shared by the SFT and DPO stages, passed to trl's SFTConfig / DPOConfig."""

    packs: ClassVar[bool] = False                   # whether trl's `packing` applies to it
    ignored_by_trl: ClassVar[dict[str, str]] = {}   # trl field -> why setting it is refused

    learning_rate: float = field(default=1e-5, metadata={
        "help": "peak learning rate (paper: 1e-5).", "range": Range(0, 1, open_lo=True)})
    num_train_epochs: int = field(default=1, metadata={
        "help": "passes over the training data (paper: SFT 1, DPO 3).", "range": Range(1, 1000)})
    global_batch_size: int = field(default=64, metadata={
        "help": "effective batch; accumulation = global / (per_device × world size) (paper: 64).",
        "range": Range(1, 1_000_000)})
    per_device_train_batch_size: int = field(default=4, metadata={
        "help": "sequences per GPU in one forward/backward pass.", "range": BATCH})
    lr_scheduler_type: str = field(default="cosine", metadata={
        "help": "transformers learning-rate schedule (cosine, linear, constant, ...)."})
    warmup_ratio: float = field(default=0.0, metadata={
        "help": "fraction of the optimizer steps spent in linear warm-up.", "range": Range(0, 1)})
    optim: str = field(default="adamw_torch", metadata={"help": "transformers optimizer name."})
    weight_decay: float = field(default=0.0, metadata={
        "help": "optimizer weight decay.", "range": Range(0, 100)})
    max_length: int = field(default=1024, metadata={
        "help": "longest tokenized training sequence (trl's max_length).",
        "range": Range(8, 1 << 20)})
    bf16: bool = field(default=True, metadata={"help": "bfloat16 mixed-precision training."})
    gradient_checkpointing: bool = field(default=True, metadata={
        "help": "recompute activations in the backward pass to save memory."})
    logging_steps: int = field(default=10, metadata={
        "help": "log the training loss every N optimizer steps.", "range": STEPS})
    save_steps: int = field(default=100, metadata={
        "help": "checkpoint every N optimizer steps; a rerun resumes from the last checkpoint.",
        "range": STEPS})
    save_total_limit: int = field(default=2, metadata={
        "help": "checkpoints kept; older ones are deleted.", "range": Range(1, 10_000)})
    deepspeed: str = field(default="zero2", metadata={
        "help": "none | zero2 | zero2_offload | zero3 (empo:deepspeed/<name>.json) | a JSON path."})
    max_grad_norm: float = field(default=1.0, metadata={
        "help": "gradient clipping norm (paper: silent; transformers' default 1.0).",
        "range": Range(0, 1e6, open_lo=True)})
    system_prompt: str | None = field(default=None, metadata={
        "help": "system message of this stage's prompts; None = `data.system_prompt`, \"\" = "
                "none."})
    trainer_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "any other trl config field, passed verbatim and checked against trl at stage "
                "start."})
    report_to: list[str] = field(default_factory=list, metadata={
        "help": "trl/transformers tracking integrations (tensorboard, wandb, mlflow, ...); [] = "
                "none. TensorBoard writes to <run dir>/tensorboard/<stage> (evaluation metrics "
                "to .../eval); W&B on nodes without internet: WANDB_MODE=offline, then `wandb "
                "sync`. Run name: <experiment>/<variant>/seed-<s>. Not part of any fingerprint."})



@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning on whole dialogues, loss on listener turns (paper: 1 epoch, lr 1e-5)."""

    trl_config: ClassVar[str] = "trainer/sft_config.py:SFTConfig"  # file:class in the trl package
    packs: ClassVar[bool] = True  # trl_args `packing` (bfd) flattens micro-batches (padding-free)


@dataclass
class DPOConfig(TrainConfig):
    """DPO on the theory-driven preference pairs, one fresh rejected draw per epoch."""

    trl_config: ClassVar[str] = "trainer/dpo_config.py:DPOConfig"
    ignored_by_trl: ClassVar[dict[str, str]] = {  # trl fields its trainer does not honour
        "padding_free": "DPOTrainer ignores it (it falls back to padded batches, with a warning)"}
    num_train_epochs: int = 3
    beta: float = field(default=0.025, metadata={
        "help": "DPO temperature (paper: 0.025; beta ≫ 0.05 over-fits).",
        "range": Range(0, 100, open_lo=True)})
    loss_type: str = field(default="sigmoid", metadata={
        "help": "trl loss (sigmoid = DPO; also ipo, hinge, robust, ...)."})
    reference: Literal["adapter_copy", "merged"] = field(default="adapter_copy", metadata={
        "help": "adapter_copy = trl's frozen copy of the SFT adapter; merged = SFT merged into "
                "the base."})
    length_percentile: float | None = field(default=None, metadata={
        "help": "drop pairs whose prompt + chosen is longer (in tokens) than this percentile of "
                "the longer of the prompt + chosen and prompt + rejected percentiles, use that "
                "length as max_length, and cut prompts to this percentile of the prompt lengths "
                "where prompt + longer answer exceeds it (trl 0.8's max_prompt_length, keep_end) "
                "(None = keep all; paper: silent; the authors' code: 95).",
        "range": Range(0, 100, open_lo=True)})
    sft_seed: int | None = field(default=None, metadata={
        "help": "None = independent chains, DPO seed s continues the SFT adapter of seed s; a "
                "seed = every DPO run continues that one SFT seed's adapter (the authors' code "
                "at 508bd49).",
        "range": Range(0, SEED_LIMIT - 1)})
    betas: dict[str, float] = field(default_factory=dict, metadata={
        "help": "seed -> beta of that seed's DPO run (seeds not listed: `beta`), e.g. "
                "{3: 0.0249}; each in `beta`'s range.",
        "range": Range(0, 100, open_lo=True)})


    def beta_of(self, seed: int) -> float:
        """The beta of DPO seed `seed`: `betas[seed]`, else `beta`."""
        return self.betas.get(str(seed), self.beta)

    def seed_structure(self, seeds: list[int]) -> str:
        """Which SFT run each DPO run continues and its beta, in words (table captions, plan)."""
        if self.sft_seed is None:
            chains = "independent chains (DPO seed s continues the SFT adapter of seed s)"
        else:
            chains = f"every DPO run continues the SFT adapter of seed {self.sft_seed}"
        betas = {s: self.beta_of(s) for s in seeds}
        if len(set(betas.values())) == 1:
            return f"{chains}; beta {self.beta_of(seeds[0]):g}"
        return f"{chains}; beta per seed " + ", ".join(f"{s}: {b:g}" for s, b in betas.items())


@dataclass
class KTOConfig(TrainConfig):
    """KTO (trl's KTOTrainer) from the SFT adapter of the same seed, on the same pairs as DPO
    unpaired: chosen desirable, rejected undesirable; one fresh rejected draw per epoch. Other trl
    KTOConfig fields (desirable_weight, undesirable_weight, loss_type) pass through."""

    trl_config: ClassVar[str] = "trainer/kto_config.py:KTOConfig"
    num_train_epochs: int = 3
    beta: float = field(default=0.1, metadata={
        "help": "KTO temperature (trl's default 0.1; the paper has no KTO run).",
        "range": Range(0, 100, open_lo=True)})



@dataclass
class ORPOConfig(TrainConfig):
    """ORPO (trl's ORPOTrainer, trl.experimental in trl >= 1.0): a new LoRA on the base model, no
    SFT stage before it and no reference model, on the same pairs as DPO, one fresh rejected
    draw per epoch. Other trl ORPOConfig fields pass through."""

    trl_config: ClassVar[str] = "experimental/orpo/orpo_config.py:ORPOConfig"
    num_train_epochs: int = 3
    beta: float = field(default=0.1, metadata={
        "help": "weight of the odds-ratio term, the ORPO paper's λ (trl's default 0.1).",
        "range": Range(0, 100, open_lo=True)})



@dataclass
class GenerationConfig:
    """Response generation for the eval split (greedy by default)."""

    max_new_tokens: int = field(default=128, metadata={
        "help": "longest generated response, in tokens.", "range": Range(1, 1 << 20)})
    do_sample: bool = field(default=False, metadata={
        "help": "sample (temperature, top_p) instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={
        "help": "sampling temperature (with do_sample).", "range": Range(0, 100, open_lo=True)})
    top_p: float = field(default=1.0, metadata={
        "help": "nucleus sampling probability mass (with do_sample).",
        "range": Range(0, 1, open_lo=True)})
    batch_size: int = field(default=32, metadata={"help": "prompts generated per batch.",
                                                  "range": BATCH})
    backend: Literal["transformers", "vllm"] = field(default="transformers", metadata={
        "help": "generation engine; vllm (the `vllm` extra and a CUDA GPU) takes the same "
                "prompt token ids and the adapter through vLLM's LoRA, merged into the base "
                "first when lora r is above vLLM's max LoRA rank.",
        "note": "(the vllm extra, a CUDA GPU)"})



@dataclass
class EpitomeConfig:
    """diff-EPITOME: directory with finetuned_{ER,EX,IP}.pth and the RoBERTa encoder/tokenizer."""

    checkpoints: str | None = field(default=None, metadata={
        "help": "that directory (the published files), or `train`: one GPU job per experiment "
                "trains them (`empo epitome train`) from `train_data` with `encoder`, shared by "
                "every eval."})
    encoder: str = field(default="roberta-base", metadata={
        "help": "RoBERTa encoder of the classifiers (Hub id or directory)."})
    tokenizer: str = field(default="roberta-base", metadata={
        "help": "tokenizer of the classifiers (Hub id or directory)."})
    padding: Literal["none", "max_length"] = field(default="none", metadata={
        "help": "none = each pair scored as if alone (seeker padding masked out of the "
                "cross-attention); max_length = pad to 64, no cross mask."})
    batch_size: int = field(default=32, metadata={"help": "responses scored per batch.",
                                                  "range": BATCH})
    train_data: str | None = field(default=None, metadata={
        "help": "directory of the EPITOME Reddit annotation CSVs (with checkpoints: train)."})
    train_seed: int = field(default=12, metadata={
        "help": "split and training seed of those classifiers (original: 12).",
        "range": Range(0, SEED_LIMIT - 1)})



@dataclass
class BertScoreConfig:
    """BERTScore F1 of prediction vs reference (default roberta-large, bert-score's layer)."""

    model: str = field(default="roberta-large", metadata={
        "help": "scoring model (bert-score model type, Hub id or directory)."})
    num_layers: int | None = field(default=None, metadata={
        "help": "layer whose embeddings are compared (None = bert-score's default for the "
                "model).",
        "range": Range(1, 1000)})
    batch_size: int = field(default=64, metadata={"help": "pairs scored per batch.",
                                                  "range": BATCH})
    rescale_with_baseline: bool = field(default=False, metadata={
        "help": "rescale scores with bert-score's baseline for the model."})



@dataclass
class MMLUConfig:
    """MMLU through lm-evaluation-harness (paper: 5-shot)."""

    tasks: list[str] = field(default_factory=lambda: ["mmlu"], metadata={
        "help": "lm-eval task names."})
    num_fewshot: int = field(default=5, metadata={
        "help": "few-shot examples per question (paper: 5).", "range": Range(0, 100)})
    include_path: str | None = field(default=None, metadata={
        "help": "extra directory of lm-eval task YAMLs (lm-eval's include_path)."})
    batch_size: int = field(default=8, metadata={"help": "lm-eval batch size.", "range": BATCH})
    limit: int | None = field(default=None, metadata={
        "help": "questions per task (None = all).", "range": Range(1, 10**9)})



@dataclass
class EvalConfig:
    """Evaluation of each variant: generation, then the metrics listed in `metrics`."""

    metrics: list[str] = field(default_factory=lambda: ["epitome", "bertscore", "mmlu"], metadata={
        "help": "metrics computed for each variant (each a metric stage of `empo.metrics`).",
        "allowed": lambda names: (None if set(names) <= set(metric_stages())
                                  else f"allowed: {', '.join(metric_stages())}")})
    system_prompt: str | None = field(default=None, metadata={
        "help": "system message of the generation prompts; None = `data.system_prompt`, \"\" = "
                "none."})
    drop_empty_predictions: bool = field(default=False, metadata={
        "help": "score only rows whose prediction is not empty after stripping whitespace "
                "(paper: silent; the authors' code: true)."})
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    epitome: EpitomeConfig = field(default_factory=EpitomeConfig)
    bertscore: BertScoreConfig = field(default_factory=BertScoreConfig)
    mmlu: MMLUConfig = field(default_factory=MMLUConfig)



RUNTIMES = ("none", "apptainer", "pyxis", "podman", "charliecloud")


def _one_of(names: tuple[str, ...]) -> Callable[[Any], str | None]:
    """metadata["allowed"] rule of a field whose value is one of `names`."""
    return lambda value: None if value in names else f"allowed: {', '.join(names)}"


@dataclass
class ContainerConfig:
    """Container runtime for cluster jobs: one of `RUNTIMES`."""

    runtime: str = field(default="none", metadata={
        "help": "container the stage jobs run in (none = the submitting environment).",
        "allowed": _one_of(RUNTIMES)})
    image: str | None = field(default=None, metadata={
        "help": "the runtime's image: a .sif file or sandbox directory (apptainer), an image "
                "name (podman), an image directory or name (charliecloud), a squashfs file or "
                "registry reference (pyxis); required unless runtime is none."})
    binds: list[str] = field(default_factory=list, metadata={
        "help": "extra host paths bound into the container, each SRC[:DST[:OPTIONS]]."})


@dataclass
class ClusterConfig(SlurmOptions):
    """Where and how stages run. The SLURM backend's own keys (partition, account, ...) are
    declared by `empo.executors.SlurmOptions`."""

    executor: str = field(default="local", metadata={
        "help": "backend that runs the stages: local, debug or slurm (`empo.executors`).",
        "allowed": _one_of(EXECUTORS)})
    profile: str | None = field(default=None, metadata={
        "help": "path of a cluster profile YAML (configs/cluster/*.yaml) merged under these "
                "keys."})
    nodes: int = field(default=1, metadata={"help": "nodes per training job.",
                                            "range": Range(1, 10_000)})
    gpus_per_node: int = field(default=0, metadata={
        "help": "GPUs per node of a training job (an eval job takes one).",
        "range": Range(0, 64)})
    cpus_per_task: int = field(default=2, metadata={
        "help": "CPU cores per task (CPU-only jobs: 1).", "range": Range(1, 1024)})
    mem_gb: int = field(default=8, metadata={
        "help": "memory per node of a job, in GB (eval: its GPU's share).",
        "range": Range(0, 1 << 20)})
    gpu_memory_gb: float = field(default=80.0, metadata={
        "help": "memory of one GPU, in GB; feeds `empo plan`'s verdict (0: no GPU, "
                "configs/cluster/local.yaml).",
        "range": Range(0, 100_000)})
    time: dict[str, int] = field(
        default_factory=lambda: {"sft": 60, "dpo": 60, "eval": 60, "aggregate": 10},
        metadata={"help": "minutes per stage (sft, dpo, eval, aggregate).",
                  "range": Range(1, 366 * 24 * 60)})
    max_requeues: int = field(default=3, metadata={
        "help": "times a job that ran out of time or was preempted is requeued.",
        "range": Range(0, 1000)})
    checkpoint_gb_per_s: float = field(default=0.5, metadata={
        "help": "the rate (GB/s) a training checkpoint is written to the results filesystem; "
                "`empo plan` turns the checkpoint's size into seconds with it. Default 0.5: one "
                "stream to one Lustre OST runs at ~350-500 MB/s (Swinburne OzSTAR/gstar "
                "filesystem notes, supercomputing.swin.edu.au/filesystems), and a checkpoint is "
                "a few files from one process.",
        "range": Range(0, 1000, open_lo=True)})
    offline: bool | None = field(default=None, metadata={
        "help": "jobs run with the Hub offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, "
                "TRANSFORMERS_OFFLINE) and read Hub assets from `hf_home` only (stage them with "
                "`empo fetch`); None: offline when `executor` is slurm (compute nodes rarely "
                "have internet)."})
    hf_home: str | None = field(default=None, metadata={
        "help": "the Hugging Face cache jobs read (HF_HOME; bound into the container when "
                "offline); None: the submitting environment's HF_HOME, else "
                "~/.cache/huggingface."})
    container: ContainerConfig = field(default_factory=ContainerConfig)


@dataclass
class SweepConfig:
    """Grid over dotted keys; each point becomes one variant per entry of `variants`."""

    grid: dict[str, list[Any]] = field(default_factory=dict, metadata={
        "help": "dotted key -> values; the cartesian product of the lists."})
    zip: dict[str, list[Any]] = field(default_factory=dict, metadata={
        "help": "dotted key -> values, lists of equal length taken position by position (point "
                "i sets every key to its i-th value: `lora.r` with `lora.lora_alpha` = r/4); "
                "combined with `grid` as the product of zipped points and grid points. A key "
                "may not be in both."})
    variants: list[str] = field(default_factory=lambda: ["sft", "sft_dpo"], metadata={
        "help": "the trained variants made at every sweep point."})



@dataclass
class ExperimentConfig:
    """One experiment: the paper's Table 1 by default (4 seeds)."""

    name: str = field(default="table1", metadata={
        "help": "experiment name; its run store is <results_dir>/<name>."})
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4], metadata={
        "help": "training seeds; every trained variant runs once per seed (paper: 4).",
        "range": Range(0, SEED_LIMIT - 1)})
    results_dir: str = field(default="results", metadata={
        "help": "directory of the run stores (relative paths: from the project root)."})
    assets: str | None = field(default=None, metadata={
        "help": "directory of tiny offline assets, created on first use (tests and smoke runs)."})
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    kto: KTOConfig = field(default_factory=KTOConfig)
    orpo: ORPOConfig = field(default_factory=ORPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    variants: list[str] = field(default_factory=lambda: ["sft", "sft_dpo"], metadata={
        "help": "the trained rows of the table besides the baseline, each the variant a "
                "training stage makes (sft, sft_dpo, ...; `empo.stages`); one that continues "
                "another's adapter brings it along."})
    root: Path = field(default_factory=Path.cwd, repr=False, compare=False)

    def local_or_name(self, value: str) -> str:
        """A config path that exists, made absolute; else the value as given (a Hub id)."""
        path = self.resolve(value)
        return str(path) if path.exists() else value

    def resolve(self, value: str | Path) -> Path:
        """A path from the config, absolute (see `resolve_path`)."""
        return resolve_path(value, self.root)

    @property
    def experiment_dir(self) -> Path:
        """results/<name>: the run store of this experiment."""
        return self.resolve(self.results_dir) / self.name

    def training_sections(self) -> dict[str, "TrainConfig"]:
        """The training stages' sections (sft, dpo, ...) by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), TrainConfig)}

    def system_prompt(self, stage: str) -> str | None:
        """The system message of `stage` (sft, dpo, eval): its own, else `data.system_prompt`;
        None when there is none."""
        own = getattr(self, stage).system_prompt
        return (self.data.system_prompt if own is None else own) or None

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what `config show` prints and runs store)."""
        data = dataclasses.asdict(self)
        data.pop("root")
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def config_hash(self) -> str:
        """Stable 12-hex hash of the resolved config, seeds and cluster placement excluded."""
        data = {k: v for k, v in self.to_dict().items() if k not in HASH_EXCLUDED}
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def with_overrides(self, overrides: dict[str, Any]) -> "ExperimentConfig":
        """A copy with dotted-key values replaced (used by sweeps), validated again."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(data, key, value, source="override")
        return from_dict(data, root=self.root)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "root"}


def _closest(key: str, valid: typing.Iterable[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.0)
    return f"; did you mean '{prefix}{match[0]}'?" if match else ""


def _convert(value: Any, hint: Any, path: str) -> Any:
    """Check `value` against a type hint, converting ints to floats where a float is expected;
    text anywhere in it must be free of control characters (`validate.check_text`)."""
    check_text(value, path)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return _build(hint, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): _convert(v, item, f"{path}.{k}") for k, v in value.items()}
    if origin is Literal:  # the allowed values: checked by `_check_choice` with the field's note
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-5 as a string
        except ValueError:
            pass
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{path}: expected {hint.__name__}, got {value!r}")
    return value


def _check_choice(cls: type, key: str, value: Any, path: str) -> None:
    """ConfigError naming the allowed values of a field: its `Literal` (and its metadata note),
    or what its metadata["allowed"] rule (value -> what is wrong, None if nothing) says."""
    rule = field_metadata(cls, key, "allowed")
    problem = rule(value) if rule else None
    if problem:
        raise ConfigError(f"{path}: {value!r} {problem}")
    hint = _field_types(cls)[key]
    if typing.get_origin(hint) is not Literal or value in typing.get_args(hint):
        return
    *head, last = [str(a) for a in typing.get_args(hint)]
    note = field_metadata(cls, key, "note")
    raise ConfigError(f"{path}: {value!r} must be {', '.join(head) + ' or ' if head else ''}"
                      f"{last}{' ' + note if note else ''}")


def build_section(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    """One config section from plain data (e.g. command-line options), checked like a config."""
    return _build(cls, raw, prefix)


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    fields = _field_types(cls)
    kwargs: dict[str, Any] = {}
    passed: dict[str, Any] = {}  # sft/dpo: trl fields beside ours, into `trainer_args`
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields and _trl_field(cls, prefix, str(key)):
            check_text(value, path)
            passed[str(key)] = value
            continue
        if key not in fields:
            raise ConfigError(f"unknown config key '{path}'"
                              f"{_closest(str(key), _known(cls, prefix), f'{prefix}.' if prefix else '')}")
        kwargs[key] = _convert(value, fields[key], path)
        check_range(cls, key, kwargs[key], path)
        _check_choice(cls, key, kwargs[key], path)
    if issubclass(cls, TrainConfig):
        for key in kwargs.get("trainer_args", {}):
            _trl_field(cls, prefix, key, where=f"{prefix}.trainer_args.{key}")
        kwargs["trainer_args"] = {**kwargs.get("trainer_args", {}), **passed}
    return cls(**kwargs)


def _trained_by_trl(cls: type) -> bool:
    """A training section whose unknown keys are its trl config's fields (`trl_config`)."""
    return issubclass(cls, TrainConfig) and bool(getattr(cls, "trl_config", ""))


def _known(cls: type, stage: str) -> list[str]:
    """The keys a section accepts: its fields, and for a training section trl's config's too."""
    extra = trl_fields(cls.trl_config) if _trained_by_trl(cls) else None
    return sorted(set(_field_types(cls)) | set(extra or ()))


def _trl_field(cls: type, stage: str, key: str, where: str = "") -> bool:
    """Whether `key` is a field of trl's config for this training section (True where trl is not
    installed here: trl checks it at stage start); ConfigError for a field the project sets or
    one that would break its semantics, or (with `where`) for a key trl does not have."""
    if not _trained_by_trl(cls):
        return False
    if key in REFUSED:
        raise ConfigError(f"{where or f'{stage}.{key}'}: not settable ({REFUSED[key]})".replace(
            "<stage>", stage))
    valid = trl_fields(cls.trl_config)
    if valid is None or key in valid:
        return True
    if where:
        raise ConfigError(f"{where}: not a field of trl's {cls.trl_config.split(':')[1]}"
                          f"{_closest(key, valid)}")
    return False


def _validate(cfg: ExperimentConfig) -> None:
    """Value checks across fields (a field's own range and allowed values stand beside it:
    `metadata["range"]`, `Literal`, `metadata["allowed"]`)."""
    check_name(cfg.name, "name")
    cfg.cluster.check_slurm_options()
    checks = [
        (bool(cfg.seeds), "seeds", cfg.seeds, "must list at least one seed"),
        (len(set(cfg.seeds)) == len(cfg.seeds), "seeds", cfg.seeds, "must not repeat"),
        (cfg.eval.epitome.checkpoints != "train" or bool(cfg.eval.epitome.train_data),
         "eval.epitome.train_data", cfg.eval.epitome.train_data,
         "must name the EPITOME annotation directory when eval.epitome.checkpoints is 'train'"),
    ]
    for ok, key, value, why in checks:
        if not ok:
            raise ConfigError(f"{key}: {value!r} {why}")
    for key in [*cfg.sweep.grid, *cfg.sweep.zip]:
        _check_dotted_key(key)
    both = [key for key in cfg.sweep.zip if key in cfg.sweep.grid]
    if both:
        raise ConfigError(f"sweep: {', '.join(both)} in both sweep.grid and sweep.zip "
                          "(a key is either zipped or a grid axis)")
    _validate_seed_structure(cfg)
    lengths = {key: len(values) for key, values in cfg.sweep.zip.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError("sweep.zip: the value lists must have equal lengths (point i takes "
                          "the i-th value of each), got "
                          + ", ".join(f"{key}: {n}" for key, n in lengths.items()))


def _validate_seed_structure(cfg: ExperimentConfig) -> None:
    """dpo.sft_seed must be one of the seeds; dpo.betas maps seeds to positive betas."""
    seeds = [str(s) for s in cfg.seeds]
    if cfg.dpo.sft_seed is not None and str(cfg.dpo.sft_seed) not in seeds:
        raise ConfigError(f"dpo.sft_seed: {cfg.dpo.sft_seed!r} must be one of seeds "
                          f"({', '.join(seeds)}): its SFT run is the one every DPO run continues")
    for key, beta in cfg.dpo.betas.items():  # a seed not run is allowed: seeds=[1] of a preset
        if not key.lstrip("-").isdigit():
            raise ConfigError(f"dpo.betas: key {key!r} is not a seed (an integer)")
        if not 0 < beta < float("inf"):  # NaN fails too
            raise ConfigError(f"dpo.betas.{key}: {beta!r} must be a positive number")
    swept = [k for k in (*cfg.sweep.grid, *cfg.sweep.zip) if k in ("dpo.beta", "dpo.betas")]
    if cfg.dpo.betas and swept:
        raise ConfigError("dpo.betas: per-seed betas and a sweep over dpo.beta do not combine; "
                          "use one of them")


def _check_dotted_key(key: str) -> None:
    cls: Any = ExperimentConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = _field_types(cls)
        if part not in fields and i == len(parts) - 1 and _trl_field(cls, parts[0], part):
            return
        if part not in fields:
            where = ".".join(parts[: i + 1])
            near = _closest(part, _known(cls, parts[0]), ".".join(parts[:i]) + "." if i else "")
            raise ConfigError(f"unknown config key '{where}'{near}")
        hint = fields[part]
        if dataclasses.is_dataclass(hint):
            cls = hint
        elif i < len(parts) - 1 and typing.get_origin(hint) is not dict:
            raise ConfigError(f"config key '{'.'.join(parts[: i + 1])}' has no sub-keys")
        else:
            return


def _set_dotted(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    _check_dotted_key(key)
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source} '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`lora.r=512` -> ("lora.r", 512); values are YAML (`seeds=[1,2]`, `x=null`)."""
    key, sep, raw = check_override_text(text).partition("=")
    if not sep or not key or any(c.isspace() for c in key):
        raise ConfigError(f"malformed override '{text}': expected dotted.key=value")
    value = load_yaml(raw, f"malformed override '{text}': value") if raw else ""
    return key, value


PACKAGE_PREFIX = "empo:"  # `empo:NAME` = a data file shipped in the package, under empo/defaults/


def package_file(name: str) -> Path:
    """The file `empo:NAME` names: empo/defaults/NAME of the installed package (a checkout, a
    wheel and the container image alike), read with importlib.resources."""
    relative = name.removeprefix(PACKAGE_PREFIX).strip("/")
    resource = resources.files("empo").joinpath("defaults", *relative.split("/"))
    if not relative or ".." in relative.split("/") or not isinstance(resource, Path):
        raise ConfigError(f"{name}: not a file shipped with empo (empo:DIR/FILE under "
                          "empo/defaults/ of an unzipped install)")
    return resource


def resolve_path(value: str | Path, root: Path) -> Path:
    """A path named in a config, made absolute: `empo:NAME` is a file shipped in the package
    (`package_file`); `~` is expanded; other relative paths are taken from `root` (the project
    root of the config file, see `project_root`)."""
    if isinstance(value, str) and value.startswith(PACKAGE_PREFIX):
        return package_file(value)
    path = home_path(value)
    return path if path.is_absolute() else Path(root) / path


def project_root(path: Path) -> Path:
    """The nearest ancestor of `path` holding `configs/`: relative config paths are taken from there."""
    for parent in Path(path).resolve().parents:
        if (parent / "configs").is_dir():
            return parent
    return Path.cwd()


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a UTF-8 file, bounded (`validate.load_yaml`), errors naming the file
    and line."""
    data = load_yaml(read_text(path, "YAML file"), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def from_dict(raw: dict[str, Any], root: Path | None = None) -> ExperimentConfig:
    """Build and validate a config from plain data (merging a cluster profile if one is named)."""
    raw = copy.deepcopy(raw)
    root = root or Path.cwd()
    cluster = raw.get("cluster")
    if isinstance(cluster, dict) and cluster.get("profile"):
        if not isinstance(cluster["profile"], str):
            raise ConfigError(f"cluster.profile: {cluster['profile']!r} is not the path of a "
                              "profile YAML")
        profile = read_yaml(resolve_path(cluster["profile"], root))
        profile.pop("profile", None)
        raw["cluster"] = _deep_merge(profile, cluster)
    try:
        cfg = _build(ExperimentConfig, raw, "")
    except TypeError as err:
        raise ConfigError(str(err)) from None
    cfg.root = root
    _validate(cfg)
    return cfg


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_with_base(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping; with `base: other.yaml` (relative to this file) the base is read
    first and this file's keys override it, mappings merged key by key, lists replaced."""
    raw = read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: expected the path of another config file")
    base_path = home_path(base)
    base_path = base_path if base_path.is_absolute() else Path(path).parent / base_path
    if base_path.resolve() in chain or len(chain) > 8:
        raise ConfigError(f"{path}: base: {base} includes itself")
    return _deep_merge(read_with_base(base_path, (*chain, Path(path).resolve())), raw)


EXPERIMENT_FILE = "experiment.yaml"  # results/<name>/: the resolved config of the last run


def read_experiment(experiment_dir: Path) -> ExperimentConfig | None:
    """The resolved config the run store keeps (experiment.yaml), or None if there is none."""
    path = Path(experiment_dir) / EXPERIMENT_FILE
    if not path.exists():
        return None
    raw = read_yaml(path)
    cluster = raw.get("cluster")
    if isinstance(cluster, dict):
        cluster.pop("profile", None)  # already merged into the resolved config
    try:
        return from_dict(raw, root=project_root(Path(experiment_dir)))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> ExperimentConfig:
    """Load an experiment YAML, apply `key=value` overrides, validate."""
    path = Path(path)
    raw = read_with_base(path)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(raw, key, value, source="override")
    try:
        return from_dict(raw, root=project_root(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
