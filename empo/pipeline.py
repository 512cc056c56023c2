"""The stage graph (DESIGN §6): an experiment's stages, their inputs, order and "is it done?".

Per seed: baseline eval; sft -> sft eval; sft -> dpo -> dpo eval; then one aggregate over all
runs. An eval is generate -> (epitome, bertscore) plus mmlu, keeping only `cfg.eval.metrics`.
Each stage is a plain call of its stage function (`empo.train`, `empo.evaluate`, `empo.results`),
done when its DONE marker exists (`empo.results.store`): re-running skips finished stages and
never overwrites them. With greedy decoding the baseline is the same for every seed, so it is
evaluated once (the first seed) and shared into the other seeds' run directories.
Where stages run is `empo.launch`'s business; this module imports no torch and no launcher.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from empo.config import ExperimentConfig
from empo.errors import EmpoError, LaunchError
from empo.results.store import (adapter_problem, atomic_write_json, atomic_write_text, is_done,
                                json_object_problem, jsonl_problem, marker, move_aside, run_dir,
                                stage_lock)

log = logging.getLogger(__name__)

TRAINING_STAGES = ("sft", "dpo")
EVAL_STAGES = ("generate", "epitome", "bertscore", "mmlu")
STAGE_KINDS = TRAINING_STAGES + EVAL_STAGES + ("share", "aggregate", "epitome_train")
# eval.epitome.checkpoints: train -> one `epitome_train` stage (a GPU job) before every epitome.
EPITOME_TRAIN = "epitome_train"
# Stages that resume from their own files after a preemption (submitit Checkpointable jobs).
CHECKPOINTABLE = ("sft", "dpo", "generate")
# Override prefixes that do not change what SFT computes: a DPO sweep point trains on the SFT run
# of its other overrides only (a beta sweep shares one SFT run per seed).
NOT_SFT_KEYS = ("dpo.", "eval.", "cluster.")
SHARED_FILE = "shared_from.json"
# What a baseline share copies (those present): the eval outputs of a run directory.
SHARED_OUTPUTS = ("predictions.jsonl", "metrics.json", "epitome_items.jsonl", "mmlu_results.json")


@dataclass(frozen=True)
class Variant:
    """One row of the table: its run-directory name, what it trains, its config."""

    name: str                   # baseline, sft, sft_dpo or a sweep point (sft@lora.r=16)
    kind: str                   # baseline | sft | sft_dpo
    config: ExperimentConfig = field(compare=False, repr=False)
    sft: str | None = None      # sft_dpo: the SFT variant whose adapter DPO starts from


@dataclass(frozen=True)
class Stage:
    """One call of a stage function on one run directory (or the experiment, for aggregate)."""

    kind: str                                   # one of STAGE_KINDS
    variant: str | None                         # None for aggregate
    seed: int | None                            # None for aggregate
    directory: Path                             # run dir (experiment dir for aggregate)
    config: ExperimentConfig = field(compare=False, repr=False)
    deps: tuple[str, ...] = ()                  # keys of the stages this one reads from
    adapter: Path | None = None                 # generate/mmlu: adapter evaluated; dpo: SFT adapter
    source: Path | None = None                  # share: the run dir whose eval is copied
    shares: tuple[str, ...] = ()                # share: the eval stages copied
    runs: tuple[str, ...] = ()                  # aggregate: the runs it summarizes

    @property
    def key(self) -> str:
        """`<kind>/<variant>/seed-<s>`, or `aggregate`."""
        return self.kind if self.variant is None else f"{self.kind}/{self.variant}/seed-{self.seed}"

    def markers(self) -> list[Path]:
        """The files whose presence says this stage is finished."""
        if self.kind in TRAINING_STAGES:
            return [marker(self.directory)]
        if self.kind == "share":
            return [marker(self.directory, kind) for kind in self.shares]
        return [marker(self.directory, self.kind)]

    def is_done(self) -> bool:
        """Marker present and outputs valid (a corrupted output is not a finished result)."""
        if self.kind == "aggregate":
            path = marker(self.directory, "aggregate")
            return (path.exists() and (self.directory / "table.csv").exists()
                    and path.read_text() == _runs_text(self.directory, self.runs))
        return all(path.exists() for path in self.markers()) and self.output_problem() is None

    def output_problem(self) -> tuple[Path, str] | None:
        """(output, why) when this stage's outputs are not usable, see `output_problem`."""
        kinds = self.shares if self.kind == "share" else (self.kind,)
        for kind in kinds:
            problem = output_problem(kind, self.directory)
            if problem:
                return problem
        return None

    def run(self) -> Any:
        """Call the stage function under the stage's lock (one process per stage at a time);
        outputs of a previous run that no longer parse are moved aside first, never deleted."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if int(os.environ.get("RANK", "0")) != 0:  # ranks > 0 of a training job: rank 0 locks
            return self._run()
        with stage_lock(self.directory, self.kind, self.key):
            if self.is_done():  # finished by another process while this one waited in the queue
                log.info("stage %s: done already", self.key)
                return None
            self._set_aside_invalid()
            return self._run()

    def _set_aside_invalid(self) -> None:
        if self.kind == "aggregate" or not all(p.exists() for p in self.markers()):
            return
        found = self.output_problem()
        if found is None:
            return
        path, problem = found
        moved = move_aside(path, problem)
        for done in self.markers():
            move_aside(done, problem)
        log.warning("stage %s: %s; redoing it%s", self.key, problem,
                    f" (the invalid output is kept as {moved})" if moved else "")

    def _run(self) -> Any:
        cfg, seed, where = self.config, self.seed, self.directory
        log.info("stage %s: start (%s)", self.key, where)
        if self.kind == "sft":
            from empo.train.sft import train_sft
            return train_sft(cfg, seed, where)
        if self.kind == "dpo":
            from empo.train.dpo import train_dpo
            return train_dpo(cfg, seed, where, self.adapter)
        if self.kind == "generate":
            from empo.evaluate.stages import generate_stage
            return generate_stage(cfg, seed, where, self.adapter)
        if self.kind == "epitome":
            from empo.evaluate.stages import epitome_stage
            return epitome_stage(cfg, where, checkpoints=self.source)
        if self.kind == EPITOME_TRAIN:
            from empo.evaluate.epitome_train import epitome_train_stage
            return epitome_train_stage(cfg, where)
        if self.kind == "bertscore":
            from empo.evaluate.stages import bertscore_stage
            return bertscore_stage(cfg, where)
        if self.kind == "mmlu":
            from empo.evaluate.stages import mmlu_stage
            return mmlu_stage(cfg, where, self.adapter)
        if self.kind == "share":
            return share_run(self.source, where, self.shares)
        if self.kind == "aggregate":
            from empo.results.aggregate import aggregate
            table = aggregate(where, cfg)
            atomic_write_text(marker(where, "aggregate"), _runs_text(where, self.runs))
            return table
        raise LaunchError(f"unknown stage kind {self.kind!r}; allowed: {', '.join(STAGE_KINDS)}")


def output_problem(kind: str, directory: Path) -> tuple[Path, str] | None:
    """(output, why) when what a stage of `kind` wrote in `directory` is not usable, else None."""
    if kind in TRAINING_STAGES:
        path, problem = directory / "adapter", adapter_problem(directory / "adapter")
    elif kind == "generate":
        path = directory / "predictions.jsonl"
        problem = jsonl_problem(path, "prediction")
    elif kind in ("epitome", "bertscore", "mmlu"):
        from empo.results.aggregate import STAGE_METRICS

        path = directory / "metrics.json"
        problem = json_object_problem(path, STAGE_METRICS[kind])
    else:
        return None
    return (path, problem) if problem else None


def _runs_text(experiment_dir: Path, runs: tuple[str, ...]) -> str:
    """The aggregate's marker: the runs it summarised and a digest of each run's metrics, so a
    redone evaluation makes the table stale."""
    import hashlib

    digests = {}
    for run in runs:
        path = Path(experiment_dir) / "runs" / run / "metrics.json"
        digests[run] = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else None
    return json.dumps(digests, sort_keys=True) + "\n"


@dataclass
class Graph:
    """All stages of an experiment in dependency order (every stage after its deps)."""

    experiment_dir: Path
    stages: dict[str, Stage]
    variants: list[Variant]

    def __iter__(self):
        return iter(self.stages.values())

    def __len__(self) -> int:
        return len(self.stages)

    def pending(self) -> list[Stage]:
        """Stages not done yet, in order (what a run or a submission starts)."""
        return [stage for stage in self if not stage.is_done()]

    def dependants(self, key: str) -> list[str]:
        """Every stage that needs `key`, directly or not, in order."""
        found: set[str] = {key}
        out = []
        for stage in self:
            if any(dep in found for dep in stage.deps):
                found.add(stage.key)
                out.append(stage.key)
        return out

    def select(self, kind: str, variant: str | None, seed: int | None) -> Stage:
        """The stage of `kind` for a variant and seed; LaunchError listing what exists."""
        for stage in self:
            if stage.kind == kind and stage.variant == variant and stage.seed == seed:
                return stage
        have = sorted({s.variant for s in self if s.kind == kind and s.variant})
        seeds = sorted({s.seed for s in self if s.seed is not None})
        raise LaunchError(f"no stage '{kind}' for variant {variant!r} seed {seed} in this experiment "
                          f"(variants with a '{kind}' stage: {', '.join(have) or 'none'}; "
                          f"seeds: {', '.join(map(str, seeds))})")


# ----------------------------------------------------------------------------- building the graph

def variants(cfg: ExperimentConfig) -> list[Variant]:
    """baseline, sft, sft_dpo; with a sweep: baseline + the sweep points (+ the SFT runs the DPO
    points start from, named like the SFT point of the same SFT-relevant overrides)."""
    out = [Variant("baseline", "baseline", cfg)]
    if not cfg.sweep.grid:
        return out + [Variant("sft", "sft", cfg), Variant("sft_dpo", "sft_dpo", cfg, sft="sft")]
    from empo.results.sweep import expand_sweep, point_name

    names = {"baseline"}
    for point in expand_sweep(cfg):
        if point.variant == "sft_dpo":
            sft_overrides = {k: v for k, v in point.overrides.items() if not k.startswith(NOT_SFT_KEYS)}
            sft_name = point_name("sft", sft_overrides) if sft_overrides else "sft"
            if sft_name not in names:
                out.append(Variant(sft_name, "sft", cfg.with_overrides(sft_overrides)))
                names.add(sft_name)
            out.append(Variant(point.name, "sft_dpo", point.config, sft=sft_name))
        elif point.name not in names:
            out.append(Variant(point.name, point.variant, point.config))
        names.add(point.name)
    return out


def baseline_shared(cfg: ExperimentConfig) -> bool:
    """Greedy decoding makes the baseline identical across seeds: evaluate it once."""
    return not cfg.eval.generation.do_sample and len(cfg.seeds) > 1


def eval_stages(variant: Variant, seed: int, where: Path, after: tuple[str, ...],
                adapter: Path | None) -> list[Stage]:
    """The evaluation of one run: generate -> (epitome, bertscore), and mmlu; those configured."""
    cfg = variant.config
    metrics = cfg.eval.metrics
    stages: list[Stage] = []
    if "epitome" in metrics or "bertscore" in metrics:
        generate = Stage("generate", variant.name, seed, where, cfg, after, adapter=adapter)
        stages.append(generate)
        if "epitome" in metrics:
            trained = cfg.eval.epitome.checkpoints == "train"
            stages.append(Stage("epitome", variant.name, seed, where, cfg,
                                (generate.key,) + ((EPITOME_TRAIN,) if trained else ()),
                                source=epitome_checkpoints(cfg) if trained else None))
        if "bertscore" in metrics:
            stages.append(Stage("bertscore", variant.name, seed, where, cfg, (generate.key,)))
    if "mmlu" in metrics:
        stages.append(Stage("mmlu", variant.name, seed, where, cfg, after, adapter=adapter))
    return stages


def epitome_checkpoints(cfg: ExperimentConfig) -> Path:
    """Where the `epitome_train` stage of `cfg` writes the classifiers (by fingerprint)."""
    from empo.evaluate.epitome_data import CHECKPOINTS, trained_dir

    return trained_dir(cfg) / CHECKPOINTS


def epitome_training(evals: list[Stage]) -> list[Stage]:
    """The one `epitome_train` stage the epitome evals wait for (none without checkpoints: train);
    shared by every seed and variant, so its inputs must not vary across a sweep."""
    sources = {s.source: s for s in evals if s.kind == "epitome" and EPITOME_TRAIN in s.deps}
    if not sources:
        return []
    if len(sources) > 1:
        raise LaunchError("eval.epitome training settings (train_data, train_seed, encoder, "
                          "tokenizer) differ between variants; one set of classifiers is trained "
                          "per experiment: keep them out of the sweep")
    source, first = next(iter(sources.items()))
    return [Stage(EPITOME_TRAIN, None, None, source.parent, first.config)]


def build_graph(cfg: ExperimentConfig) -> Graph:
    """Every stage of the experiment (done or not), each after the stages it reads from."""
    exp = cfg.experiment_dir
    stages: list[Stage] = []
    evals: list[Stage] = []
    runs: list[str] = []
    all_variants = variants(cfg)
    shared = baseline_shared(cfg)
    for variant in all_variants:
        for seed in cfg.seeds:
            where = run_dir(exp, variant.name, seed)
            after: tuple[str, ...] = ()
            adapter = None
            if variant.kind == "sft":
                train = Stage("sft", variant.name, seed, where, variant.config)
                stages.append(train)
                after, adapter = (train.key,), where / "adapter"
            elif variant.kind == "sft_dpo":
                sft_dir = run_dir(exp, variant.sft, seed)
                train = Stage("dpo", variant.name, seed, where, variant.config,
                              (f"sft/{variant.sft}/seed-{seed}",), adapter=sft_dir / "adapter")
                stages.append(train)
                after, adapter = (train.key,), where / "adapter"
            if variant.kind == "baseline" and shared and seed != cfg.seeds[0]:
                first = [s for s in evals if s.variant == "baseline" and s.seed == cfg.seeds[0]]
                if not first:
                    continue
                share = Stage("share", "baseline", seed, where, variant.config,
                              tuple(s.key for s in first), source=first[0].directory,
                              shares=tuple(s.kind for s in first))
                evals.append(share)
            else:
                made = eval_stages(variant, seed, where, after, adapter)
                if not made:
                    continue
                evals.extend(made)
            runs.append(f"{variant.name}/seed-{seed}")
    # Training stages first (variant order), then evaluations: keeps every dep before its user.
    ordered = epitome_training(evals) + stages + evals
    if evals:
        ordered.append(Stage("aggregate", None, None, exp, cfg, tuple(s.key for s in evals),
                             runs=tuple(runs)))
    return Graph(exp, {stage.key: stage for stage in ordered}, all_variants)


# ----------------------------------------------------------------------------- running stages

def export_distributed_env() -> dict[str, str] | None:
    """Inside a multi-task submitit or SLURM job step: export MASTER_ADDR, MASTER_PORT, RANK,
    WORLD_SIZE, LOCAL_RANK from the job (submitit's TorchDistributedEnvironment). With one task
    nothing is exported: the stages' single-process defaults apply. CUDA_VISIBLE_DEVICES is left
    alone so each rank picks cuda:LOCAL_RANK the way accelerate/DeepSpeed expect."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        if "RANK" in os.environ or "SLURM_STEP_ID" not in os.environ:
            return None  # not in a job, or the launcher (jobs/*.sbatch, torchrun) set it already
        os.environ["SUBMITIT_EXECUTOR"] = "slurm"  # an srun step of a plain sbatch script
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks <= 1:
        return None
    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    names = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    log.info("torch distributed env: rank %s of %s, master %s:%s", env.rank, env.world_size,
             env.master_addr, env.master_port)
    return {name: os.environ[name] for name in names}


class StageError(EmpoError):
    """One or more stages of a job failed (the first failure is the cause)."""


class StageCall:
    """A picklable job body: runs its stages in order in this process, skipping finished ones."""

    def __init__(self, stages: list[Stage] | tuple[Stage, ...]) -> None:
        self.stages = tuple(stages)

    def __call__(self) -> dict[str, str]:
        if not logging.getLogger().handlers:  # a job process: stage logs go to the job's stderr
            logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if any(stage.kind in TRAINING_STAGES for stage in self.stages):
            export_distributed_env()
        outcome: dict[str, str] = {}
        errors: dict[str, Exception] = {}
        for stage in self.stages:
            if stage.is_done():
                outcome[stage.key] = "skipped (done)"
                continue
            blocked = [dep for dep in stage.deps if dep in errors or
                       outcome.get(dep, "").startswith("not run")]
            if blocked:  # e.g. no predictions for the metrics: the others still run
                outcome[stage.key] = f"not run ({blocked[0]} failed)"
                continue
            try:
                stage.run()
            except Exception as err:  # noqa: BLE001 - reported below, after the independent stages
                if len(self.stages) == 1:
                    raise
                log.exception("stage %s failed", stage.key)
                errors[stage.key] = err
                outcome[stage.key] = "failed"
                continue
            outcome[stage.key] = "done"
        if errors:
            first = next(iter(errors.values()))
            summary = "; ".join(f"{key}: {type(err).__name__}: {err}" for key, err in errors.items())
            raise StageError(f"{len(errors)} stage(s) failed ({summary})") from first
        return outcome

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(s.key for s in self.stages)})"


class CheckpointableStageCall(StageCall, Checkpointable):
    """On preemption/timeout submitit pickles this call again and requeues it; the stage resumes
    from its own checkpoints on disk (training checkpoints/, partial predictions)."""


def stage_call(stages: list[Stage] | tuple[Stage, ...]) -> StageCall:
    """The job body for `stages`: checkpointable when one of them resumes from its own files."""
    if any(stage.kind in CHECKPOINTABLE for stage in stages):
        return CheckpointableStageCall(stages)
    return StageCall(stages)


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
