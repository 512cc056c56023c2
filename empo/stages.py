"""The stage registry: one declaration per stage kind — its function, the job it runs in, what
it asks of the cluster, whether it resumes after preemption, the files and metric keys it writes,
and the config fields its output depends on. The pipeline, launcher, resources, status, aggregate
and CLI read this table instead of keeping lists of their own (README, "Extending").

Each function takes the `Stage` (kind, variant, seed, directory, config, adapter, ...) and imports
its heavy stack itself, so this module stays importable on a login node.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empo.errors import LaunchError
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
                  "bertscore_items.jsonl", "mmlu_results.json")


@dataclass(frozen=True)
class StageKind:
    """What the rest of the project knows about one kind of stage."""

    name: str
    run: Callable[["Stage"], Any]
    job: str                                # the job it runs in (its own, or eval / cpu)
    resources: str                          # training | eval | cpu (see launch/resources.py)
    time_key: str                           # key of cluster.time (minutes)
    checkpointable: bool = False            # resumes from its own files after a requeue
    outputs: tuple[str, ...] = ()           # what it writes in its directory
    metrics: tuple[str, ...] = ()           # keys it adds to metrics.json
    depends_on: tuple[str, ...] = ()        # config sections/fields its output depends on
    ignores: tuple[str, ...] = ()           # fields under those that do not change its output


# ----------------------------------------------------------------------------- stage functions

def _sft(stage: "Stage") -> Any:
    from empo.train.sft import train_sft

    return train_sft(stage.config, stage.seed, stage.directory)


def _dpo(stage: "Stage") -> Any:
    from empo.train.dpo import train_dpo

    return train_dpo(stage.config, stage.seed, stage.directory, stage.adapter)


def _generate(stage: "Stage") -> Any:
    from empo.evaluate.stages import generate_stage

    return generate_stage(stage.config, stage.seed, stage.directory, stage.adapter)


def _epitome(stage: "Stage") -> Any:
    from empo.evaluate.stages import epitome_stage

    return epitome_stage(stage.config, stage.directory, checkpoints=stage.source)


def _epitome_train(stage: "Stage") -> Any:
    from empo.evaluate.epitome_train import epitome_train_stage

    return epitome_train_stage(stage.config, stage.directory)


def _bertscore(stage: "Stage") -> Any:
    from empo.evaluate.stages import bertscore_stage

    return bertscore_stage(stage.config, stage.directory)


def _mmlu(stage: "Stage") -> Any:
    from empo.evaluate.stages import mmlu_stage

    return mmlu_stage(stage.config, stage.directory, stage.adapter)


def _share(stage: "Stage") -> Any:
    return share_run(stage.source, stage.directory, stage.shares)


def _aggregate(stage: "Stage") -> Any:
    from empo.results.aggregate import aggregate

    return aggregate(stage.directory, stage.config)


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

def _training(name: str, run: Callable[["Stage"], Any], ignores: tuple[str, ...] = ()) -> StageKind:
    return StageKind(name, run, job=name, resources="training", time_key=name, checkpointable=True,
                     outputs=("adapter", "train_log.jsonl", "config.yaml", "checkpoints",
                              "adapter.partial"),
                     depends_on=("model", "data", "lora", name),
                     ignores=("model.architecture", *NOT_TRAINING_DATA, *ignores,
                              *(f"{name}.{field}" for field in CADENCE)))


REGISTRY: dict[str, StageKind] = {kind.name: kind for kind in (
    _training("sft", _sft, ignores=("data.emotion_table", "data.sampling")),  # pairs: DPO only
    _training("dpo", _dpo, ignores=("dpo.sft_seed", "dpo.betas")),  # seed structure: in deps, dpo.beta
    StageKind("epitome_train", _epitome_train, job="epitome_train", resources="eval",
              time_key="eval", depends_on=("eval.epitome",),
              ignores=("eval.epitome.batch_size", "eval.epitome.padding")),
    StageKind("generate", _generate, job="eval", resources="eval", time_key="eval",
              checkpointable=True, outputs=("predictions.jsonl", "predictions.jsonl.partial"),
              depends_on=("model", "data", "eval.generation"),
              ignores=("model.architecture", "data.train_split", "data.emotion_table",
                       "data.sampling", "eval.generation.batch_size")),
    StageKind("epitome", _epitome, job="eval", resources="eval", time_key="eval",
              outputs=("epitome_items.jsonl",), metrics=("diff_er", "diff_ex", "diff_ip"),
              depends_on=("eval.epitome",), ignores=("eval.epitome.batch_size",)),
    StageKind("bertscore", _bertscore, job="eval", resources="eval", time_key="eval",
              metrics=("fbert",), outputs=("bertscore_items.jsonl",),
              depends_on=("eval.bertscore",),
              ignores=("eval.bertscore.batch_size",)),
    StageKind("mmlu", _mmlu, job="eval", resources="eval", time_key="eval",
              outputs=("mmlu_results.json",), metrics=("mmlu",),
              depends_on=("model", "eval.mmlu"),
              ignores=("model.architecture", "eval.mmlu.batch_size")),
    StageKind("share", _share, job="share", resources="cpu", time_key="aggregate",
              outputs=SHARED_OUTPUTS + (SHARED_FILE,)),
    StageKind("aggregate", _aggregate, job="aggregate", resources="cpu", time_key="aggregate",
              outputs=("table.csv", "table.md", "table.tex", "compare.csv", "compare.md",
                       "correlations.csv")),
)}
TRAINING = tuple(k for k, v in REGISTRY.items() if v.resources == "training")
EVALUATION = tuple(k for k, v in REGISTRY.items() if v.job == "eval")  # one eval job's stages
METRIC_STAGES = tuple(k for k, v in REGISTRY.items() if v.metrics)     # eval.metrics values
JOB_KINDS = tuple(dict.fromkeys(v.job for v in REGISTRY.values()))


def stage_kind(name: str) -> StageKind:
    """The registry entry of `name`; LaunchError listing the kinds there are."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise LaunchError(f"unknown stage kind {name!r}; allowed: {', '.join(REGISTRY)}") from None


def metric_keys(stage_names: tuple[str, ...] | list[str]) -> list[str]:
    """The metrics.json keys the given stages produce, in registry order."""
    return [m for name in stage_names for m in stage_kind(name).metrics]


def output_problem(kind: str, directory: Path, with_keys: bool = True) -> tuple[Path, str] | None:
    """(output, why) when what a stage of `kind` wrote in `directory` is not usable, else None
    (`with_keys=False`: only whether the files parse, not whether they hold the stage's keys)."""
    entry = stage_kind(kind)
    if entry.resources == "training":
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
