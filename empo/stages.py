"""The stage registry: one declaration per stage kind — its function, the job it runs in, what
it asks of the cluster (tasks per GPU, memory plan, preflight), whether it resumes after
preemption, the files it writes, the assets it reads, the variant it makes and the config fields
its output depends on (its metric keys: the `empo.metrics` declarations naming it). The pipeline,
launcher, preflight, fetch, wrappers, status, table and CLI read this table instead of keeping
lists of their own (README, "Extending").

Functions and hooks are "module:function" strings, imported when called, so this module stays
importable on a login node and imports no stage.
"""
from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empo.errors import LaunchError
from empo.metrics import stage_metrics
from empo.store import (adapter_problem, atomic_write_json, atomic_write_text, is_done,
                                json_object_problem, jsonl_problem, marker)

if TYPE_CHECKING:
    from empo.pipeline import Stage

# Fields that change how a stage runs, never what it computes: outside every fingerprint.
# (`global_batch_size` stays in: it is the optimisation's batch; its split into per-device x
# accumulation x world size is placement.)
CADENCE = ("logging_steps", "save_steps", "save_total_limit", "per_device_train_batch_size",
           "gradient_checkpointing", "deepspeed", "report_to")
NOT_TRAINING_DATA = ("data.eval_split", "data.max_eval_examples")
SHARED_FILE = "shared_from.json"
# What a baseline share copies (those present): the eval outputs of a run directory.
SHARED_OUTPUTS = ("predictions.jsonl", "metrics.json", "epitome_items.jsonl",
                  "epitome_checkpoints.json", "bertscore_items.jsonl", "mmlu_results.json")


@dataclass(frozen=True)
class StageKind:
    """What the rest of the project knows about one kind of stage. Functions are named by
    "module:function" strings and imported only when called (`hook`), so this module stays
    importable on a login node and imports none of the stages."""

    name: str
    run: str                                # "module:function" (see `call_stage`)
    job: str                                # the job it runs in (its own, or eval / cpu)
    resources: str                          # training | eval | cpu (see launch/resources.py)
    time_key: str                           # key of cluster.time (minutes)
    checkpointable: bool = False            # resumes from its own files after a requeue
    outputs: tuple[str, ...] = ()           # what it writes in its directory
    depends_on: tuple[str, ...] = ()        # config sections/fields its output depends on
    ignores: tuple[str, ...] = ()           # fields under those that do not change its output
    reads: str = ""                         # eval: predictions (after generate) | adapter | ""
    assets: str | None = None               # "module:function" (cfg, kind) -> [hub.Asset] it reads
    # training stages
    variant: str | None = None              # the table row it makes (sft, sft_dpo, ...)
    label: str = ""                         # its name in the table's variant labels (SFT, DPO)
    starts_from: str | None = None          # the training stage whose adapter it continues
    seed_run: str | None = None             # "module:function" (cfg, seed) -> (the seed whose
                                            # adapter it continues, its config for this seed);
                                            # None: its own seed, the variant's config
    tasks_per_gpu: bool = False             # one task per GPU (torch distributed), else one a node
    sequences: int = 1                      # sequences per example in a micro-batch (memory plan)
    reference: str | None = None            # its frozen reference (memory plan): a mode
                                            # (adapter_copy) or the config key holding it
    flops_per_token: int = 0                # per parameter: 6 (train), 8 (+ reference), 2 (eval)
    tokens: str | None = None               # "module:function" (cfg, kind, data) -> tokens/epoch
    plan: str | None = None                 # "module:function" memory plan (see `memory_plan`)
    preflight: str | None = None            # "module:function" (cfg, kind, variant) -> problems
    help: str = ""                          # one line for `empo train KIND --help`

    @property
    def trains(self) -> bool:
        return self.resources == "training"

    @property
    def metrics(self) -> tuple[str, ...]:
        """The keys it adds to metrics.json (`empo.metrics` declarations naming this stage)."""
        return stage_metrics(self.name)


def hook(spec: str) -> Callable[..., Any]:
    """The function a "module:function" string names, imported now."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def call_stage(stage: "Stage") -> Any:
    """Run `stage` with its kind's function: a training stage gets (config, seed, directory) and
    the adapter it continues when its kind `starts_from` one; the others take the `Stage`."""
    entry = stage_kind(stage.kind)
    function = hook(entry.run)
    if not entry.trains:
        return function(stage)
    start = (stage.adapter,) if entry.starts_from else ()
    return function(stage.config, stage.seed, stage.directory, *start)


# ----------------------------------------------------------------------------- stage functions

def generate(stage: "Stage") -> Any:
    return hook("empo.evaluate.stages:generate_stage")(stage.config, stage.seed, stage.directory,
                                                       stage.adapter)


def epitome(stage: "Stage") -> Any:
    return hook("empo.evaluate.stages:epitome_stage")(stage.config, stage.directory,
                                                      checkpoints=stage.source)


def epitome_train(stage: "Stage") -> Any:
    return hook("empo.evaluate.epitome_train:epitome_train_stage")(stage.config, stage.directory)


def bertscore(stage: "Stage") -> Any:
    return hook("empo.evaluate.stages:bertscore_stage")(stage.config, stage.directory)


def mmlu(stage: "Stage") -> Any:
    return hook("empo.evaluate.stages:mmlu_stage")(stage.config, stage.directory, stage.adapter)


def share(stage: "Stage") -> Any:
    return share_run(stage.source, stage.directory, stage.shares)


def aggregate(stage: "Stage") -> Any:
    return hook("empo.results.aggregate:aggregate")(stage.directory, stage.config)


def share_run(source: Path, target: Path, kinds: tuple[str, ...]) -> Path:
    """Record the first seed's baseline eval for another seed: copy predictions and metrics, note
    where they come from, then write the markers (last, so a half copy is redone)."""
    missing = [kind for kind in kinds if not is_done(source, kind)]
    if missing:
        raise LaunchError(f"{source}: cannot share the baseline eval, stages not done: "
                          f"{', '.join(missing)}")
    target.mkdir(parents=True, exist_ok=True)
    for name in SHARED_OUTPUTS:
        if (source / name).exists():
            shutil.copyfile(source / name, target / f".{name}.share")
            os.replace(target / f".{name}.share", target / name)
    atomic_write_json(target / SHARED_FILE, {
        "shared_from": source.name,
        "reason": "greedy decoding (eval.generation.do_sample: false) gives the same baseline for "
                  "every seed; it was evaluated once and recorded for each seed (SD 0)",
        "stages": list(kinds),
    })
    for kind in kinds:
        if not is_done(target, kind):
            atomic_write_text(marker(target, kind), "")
    return target


# ----------------------------------------------------------------------------- the registry

def training(name: str, run: str, label: str, help: str, variant: str | None = None,
             starts_from: str | None = None, pairs: bool = False, reference: str | None = None,
             ignores: tuple[str, ...] = (), seed_run: str | None = None) -> StageKind:
    """A training stage: trains a LoRA adapter from config section `name` (its own job, one task
    per GPU, resumable); `starts_from`: continues that stage's adapter of the same seed (or of
    the seed `seed_run` names, with the config it gives each seed);
    `pairs`: two sequences per example (chosen and rejected); `reference`: the frozen reference
    it keeps, a mode (adapter_copy) or the config key holding one (dpo.reference)."""
    return StageKind(name, run, job=name, resources="training", time_key=name,
                     checkpointable=True,
                     outputs=("adapter", "train_log.jsonl", "config.yaml", "checkpoints",
                              "adapter.partial"),
                     depends_on=("model", "data", "lora", name),
                     ignores=("model.architecture", *NOT_TRAINING_DATA, *ignores,
                              *(f"{name}.{field}" for field in CADENCE)),
                     assets="empo.hub:training_assets", variant=variant or name, label=label,
                     starts_from=starts_from, seed_run=seed_run, tasks_per_gpu=True,
                     sequences=2 if pairs else 1,
                     reference=reference, flops_per_token=8 if reference else 6,
                     tokens="empo.estimate:training_tokens", plan="empo.train.memory:plan_memory",
                     preflight="empo.train.memory:memory_problems", help=help)


REGISTRY: dict[str, StageKind] = {kind.name: kind for kind in (
    training("sft", "empo.train.sft:train_sft", "SFT",
             "LoRA SFT on whole dialogues (loss on listener turns)",
             ignores=("data.emotion_table", "data.sampling")),  # pairs: preference stages only
    training("dpo", "empo.train.dpo:train_dpo", "DPO", "DPO from the SFT adapter of the same seed",
             variant="sft_dpo", starts_from="sft",
             pairs=True, reference="dpo.reference",  # seed structure: in the deps and dpo.beta
             ignores=("dpo.sft_seed", "dpo.betas"), seed_run="empo.train.dpo:seed_run"),
    training("kto", "empo.train.kto:train_kto", "KTO", "KTO from the SFT adapter of the same seed", variant="sft_kto", starts_from="sft", pairs=True, reference="adapter_copy"),
    training("orpo", "empo.train.orpo:train_orpo", "ORPO", "ORPO from the base model (reference-free, no SFT before it)", pairs=True),
    StageKind("epitome_train", "empo.stages:epitome_train", job="epitome_train",
              resources="eval", time_key="eval", depends_on=("eval.epitome",),
              ignores=("eval.epitome.batch_size", "eval.epitome.padding")),
    StageKind("generate", "empo.stages:generate", job="eval", resources="eval", time_key="eval",
              checkpointable=True, outputs=("predictions.jsonl", "predictions.jsonl.partial"),
              depends_on=("model", "data", "eval.generation"),
              ignores=("model.architecture", "data.train_split", "data.emotion_table",
                       "data.sampling", "eval.generation.batch_size"),
              reads="adapter", flops_per_token=2, tokens="empo.estimate:generation_tokens"),
    StageKind("epitome", "empo.stages:epitome", job="eval", resources="eval", time_key="eval",
              outputs=("epitome_items.jsonl", "epitome_checkpoints.json"),
              depends_on=("eval.epitome",),
              ignores=("eval.epitome.batch_size",), reads="predictions",
              assets="empo.hub:epitome_assets"),
    StageKind("bertscore", "empo.stages:bertscore", job="eval", resources="eval",
              time_key="eval", outputs=("bertscore_items.jsonl",), depends_on=("eval.bertscore",),
              ignores=("eval.bertscore.batch_size",), reads="predictions",
              assets="empo.hub:bertscore_assets"),
    StageKind("mmlu", "empo.stages:mmlu", job="eval", resources="eval", time_key="eval",
              outputs=("mmlu_results.json",), depends_on=("model", "eval.mmlu"),
              ignores=("model.architecture", "eval.mmlu.batch_size"), reads="adapter",
              assets="empo.hub:mmlu_assets", flops_per_token=2,
              tokens="empo.estimate:mmlu_tokens"),
    StageKind("share", "empo.stages:share", job="share", resources="cpu", time_key="aggregate",
              outputs=SHARED_OUTPUTS + (SHARED_FILE,)),
    StageKind("aggregate", "empo.stages:aggregate", job="aggregate", resources="cpu",
              time_key="aggregate",
              outputs=("table.csv", "table.md", "table.tex", "compare.csv", "compare.md",
                       "correlations.csv")),
)}


def register_stage(entry: StageKind) -> StageKind:
    """Add a stage kind (after the built-in ones); LaunchError if the name is taken."""
    if entry.name in REGISTRY:
        raise LaunchError(f"stage kind {entry.name!r} is declared twice")
    REGISTRY[entry.name] = entry
    return entry


def unregister_stage(name: str) -> None:
    """Remove a stage kind (tests that declare one of their own)."""
    REGISTRY.pop(name, None)


def stage_kind(name: str) -> StageKind:
    """The registry entry of `name`; LaunchError listing the kinds there are."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise LaunchError(f"unknown stage kind {name!r}; allowed: {', '.join(REGISTRY)}") from None


def experiment_kinds(cfg: Any) -> tuple[str, ...]:
    """The stage kinds an experiment's graph holds, in registry order: the training stages of
    its variants (`sweep.variants` with a sweep), and the eval stages of `eval.metrics`."""
    swept = cfg.sweep.grid or cfg.sweep.zip
    trained = {e.name for v in (cfg.sweep.variants if swept else cfg.variants)
               for e in variant_stages(v)}
    return tuple(k for k in REGISTRY if k in trained or k in cfg.eval.metrics)


def training_kinds() -> tuple[str, ...]:
    """The stage kinds that train an adapter, in registry order."""
    return tuple(k for k, v in REGISTRY.items() if v.trains)


def evaluation_kinds() -> tuple[str, ...]:
    """The stages of one eval job (generate and the metric stages), in registry order."""
    return tuple(k for k, v in REGISTRY.items() if v.job == "eval")


def job_kinds() -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.job for v in REGISTRY.values()))


def trained_variants() -> dict[str, StageKind]:
    """Variant name (sft, sft_dpo, ...) -> the training stage that makes it."""
    return {v.variant: v for v in REGISTRY.values() if v.trains and v.variant}


def variant_stages(variant: str) -> list[StageKind]:
    """The training stages a variant's adapter goes through, first to last (sft_dpo: sft, dpo)."""
    entry = trained_variants().get(variant)
    chain: list[StageKind] = []
    while entry is not None:
        chain.insert(0, entry)
        entry = REGISTRY.get(entry.starts_from) if entry.starts_from else None
    return chain


def variant_label(variant: str) -> str | None:
    """A variant's name in the table (SFT+DPO), None for one no stage makes (a sweep point)."""
    if variant == "baseline":
        return "baseline"
    chain = variant_stages(variant)
    return "+".join(entry.label for entry in chain) if chain else None


def default_variant(kind: str) -> str | None:
    """The variant a training stage makes (what `empo stage KIND` runs without --variant)."""
    entry = REGISTRY.get(kind)
    return entry.variant if entry is not None and entry.trains else None


def memory_plan(cfg: Any, kind: str, gpus_per_node: int | None = None,
                nodes: int | None = None) -> Any:
    """The memory plan of training stage `kind` (its `plan` hook, given its per-example
    sequences and the reference its config keeps)."""
    entry = stage_kind(kind)
    if entry.plan is None:
        raise LaunchError(f"stage {kind!r} trains nothing to plan; training stages: "
                          f"{', '.join(training_kinds())}")
    return hook(entry.plan)(cfg, kind, gpus_per_node, nodes, **_plan_facts(cfg, entry))


def preflight_problems(cfg: Any, kind: str, variant: str) -> list[tuple[str, str, str]]:
    """(config key, what, fix) of each problem stage `kind` of `variant` would meet (its
    `preflight` hook, e.g. the memory plan against cluster.gpu_memory_gb)."""
    entry = stage_kind(kind)
    if entry.preflight is None:
        return []
    return hook(entry.preflight)(cfg, kind, variant, **_plan_facts(cfg, entry))


def _plan_facts(cfg: Any, entry: StageKind) -> dict[str, Any]:
    """What the memory plan needs to know of a training stage: sequences per example and the
    reference its config keeps."""
    reference = entry.reference
    if reference and "." in reference:  # a config key: dpo.reference
        section, _, field = reference.partition(".")
        reference = getattr(getattr(cfg, section), field)
    return {"sequences": entry.sequences, "reference": reference}


def output_problem(kind: str, directory: Path, with_keys: bool = True) -> tuple[Path, str] | None:
    """(output, why) when what a stage of `kind` wrote in `directory` is not usable, else None
    (`with_keys=False`: only whether the files parse, not whether they hold the stage's keys)."""
    entry = stage_kind(kind)
    if entry.trains:
        path, problem = directory / "adapter", adapter_problem(directory / "adapter")
    elif kind == "generate":
        path = directory / "predictions.jsonl"
        problem = jsonl_problem(path, "prediction")
    elif entry.metrics:
        path = directory / "metrics.json"
        problem = json_object_problem(path, entry.metrics if with_keys else ())
    else:
        return None
    return (path, problem) if problem else None
