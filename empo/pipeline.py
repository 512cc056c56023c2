"""The stage graph (DESIGN §6): an experiment's stages, their inputs, order and "is it done?".

Per seed: baseline eval; sft -> sft eval; sft -> dpo -> dpo eval; then one aggregate over all
runs. An eval is generate -> (epitome, bertscore) plus mmlu, keeping only `cfg.eval.metrics`.
What each kind of stage does, writes and depends on is declared once, in `empo.stages`.

Identity is per stage: a stage's fingerprint hashes the config fields its output depends on (models
and data by content, `empo.fingerprint`) and the fingerprints of the stages it reads. It is
recorded in the run directory's `stage.json`. A stage is done when its marker exists, its outputs
parse and its recorded fingerprint is the current one; a stage whose fingerprint changed re-runs
after its outputs are moved aside under the old fingerprint (never deleted). With greedy decoding
the baseline is the same for every seed, so it is evaluated once (the first seed) and shared
into the other seeds' run directories. This module imports no torch and no launcher.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from empo.config import ExperimentConfig
from empo.distributed import process_rank
from empo.errors import ConfigError, EmpoError, LaunchError
from empo.evaluate.epitome_data import CHECKPOINTS, trained_dir
from empo.fingerprint import fingerprint, identity_fields
from empo.joblog import finish_streams, start_job_logging
from empo.reader import JSON_LIMIT, ReadError, read_bytes, read_json, read_text
from empo.results.sweep import expand_sweep, point_name
from empo.stages import (REGISTRY, call_stage, hook, output_problem, stage_kind, trained_variants,
                         variant_stages)
from empo.store import (atomic_write_json, atomic_write_text, claim_experiment_dir,
                        json_object_problem, marker, merge_json, move_aside, run_dir, stage_lock)
from empo.tracking import log_eval_metrics

log = logging.getLogger(__name__)

EPITOME_TRAIN = "epitome_train"  # eval.epitome.checkpoints: train -> one such stage per experiment
GENERATE = "generate"            # the predictions the stages that read them (`reads`) score
STAGE_RECORD = "stage.json"      # per run directory: stage kind -> fingerprint and its fields
# Override prefixes that do not change what the stage a variant starts from computes (besides the
# variant's own section): a DPO sweep point trains on the SFT run of its other overrides only (a
# beta sweep shares one SFT run per seed).
NOT_START_KEYS = ("eval.", "cluster.")


@dataclass(frozen=True)
class Variant:
    """One row of the table: its run-directory name, what it trains, its config."""

    name: str                   # baseline, sft, sft_dpo or a sweep point (sft@lora.r=16)
    kind: str                   # baseline or the variant a training stage makes (sft, sft_dpo)
    config: ExperimentConfig = field(compare=False, repr=False)
    start: str | None = None    # sft_dpo: the variant whose adapter its training continues


@dataclass(frozen=True)
class Stage:
    """One call of a stage function on one run directory (or the experiment, for aggregate)."""

    kind: str                                   # a key of empo.stages.REGISTRY
    variant: str | None                         # None for aggregate
    seed: int | None                            # None for aggregate
    directory: Path                             # run dir (experiment dir for aggregate)
    config: ExperimentConfig = field(compare=False, repr=False)
    deps: tuple[str, ...] = ()                  # keys of the stages this one reads from
    adapter: Path | None = None                 # generate/mmlu: adapter evaluated; dpo: SFT adapter
    source: Path | None = None                  # share: the run dir whose eval is copied
    shares: tuple[str, ...] = ()                # share: the eval stages copied
    runs: tuple[str, ...] = ()                  # aggregate: the runs it summarizes
    fingerprint: str = field(default="", compare=False)   # set by build_graph
    fields: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    upstream: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    @property
    def key(self) -> str:
        """`<kind>/<variant>/seed-<s>`, or `aggregate`."""
        return self.kind if self.variant is None else f"{self.kind}/{self.variant}/seed-{self.seed}"

    def markers(self) -> list[Path]:
        """The files whose presence says this stage is finished."""
        if stage_kind(self.kind).trains:
            return [marker(self.directory)]
        if self.kind == "share":
            return [marker(self.directory, kind) for kind in self.shares]
        return [marker(self.directory, self.kind)]

    def record(self) -> dict[str, Any] | None:
        """What `stage.json` says of this stage (None: nothing recorded, e.g. an older run)."""
        path = self.directory / STAGE_RECORD
        try:
            if json_object_problem(path) is not None:
                return None
            found = read_json(path).get(self.kind)
        except (OSError, ReadError):  # not a directory (yet): nothing recorded
            return None
        return found if isinstance(found, dict) else None

    def superseded(self) -> dict[str, Any] | None:
        """The record of an earlier run of this stage under another fingerprint, if any."""
        record = self.record()
        if record and self.fingerprint and record.get("fingerprint") != self.fingerprint:
            return record
        return None

    def is_done(self) -> bool:
        """Marker present, outputs valid and fingerprint current (a corrupted or superseded
        output is not a finished result of this config)."""
        if not all(path.exists() for path in self.markers()) or self.superseded():
            return False
        if self.kind == "aggregate":
            return (self.directory / "table.csv").exists() and \
                _marker_text(marker(self.directory, "aggregate")) == _runs_text(self.directory,
                                                                                self.runs)
        return self.output_problem() is None

    def output_problem(self) -> tuple[Path, str] | None:
        """(output, why) when this stage's outputs are not usable, see `stages.output_problem`."""
        for kind in (self.shares if self.kind == "share" else (self.kind,)):
            problem = output_problem(kind, self.directory)
            if problem:
                return problem
        return None

    def changed_fields(self) -> list[str]:
        """The fields (or upstream stages) whose change makes this stage's record stale."""
        record = self.superseded() or {}
        old = record.get("fields", {})
        keys = sorted(k for k in set(old) | set(self.fields) if old.get(k) != self.fields.get(k))
        deps, now = record.get("deps", {}), dict(self.upstream)
        stale = [f"{d} (re-run)" for d in sorted(set(deps) | set(now)) if deps.get(d) != now.get(d)]
        return keys + stale or ["(unknown: recorded by another version)"]

    def run(self) -> Any:
        """Call the stage function under the stage's lock (one process per stage at a time).
        Outputs of an earlier run under another fingerprint, or that no longer parse, are moved
        aside first, never deleted; the fingerprint is recorded when the stage starts and ends.
        It writes only into an experiment directory EmPO owns (`store.claim_experiment_dir`)."""
        claim_experiment_dir(self.config.experiment_dir)
        self.directory.mkdir(parents=True, exist_ok=True)
        if stage_kind(self.kind).trains and process_rank() != 0:  # rank 0 holds the lock
            return self._call()
        with stage_lock(self.directory, self.kind, self.key):
            if self.is_done():  # finished by another process while this one waited in the queue
                log.info("stage %s: done already", self.key)
                return None
            self._set_aside_superseded()
            self._set_aside_invalid()
            self.write_record("running")
            started = time.monotonic()
            result = self._call()
            if self.kind == "aggregate":
                atomic_write_text(marker(self.directory, "aggregate"),
                                  _runs_text(self.directory, self.runs))
            self.write_record("done", seconds=round(time.monotonic() - started, 3))
            if stage_kind(self.kind).metrics:
                log_eval_metrics(self.config, self.directory, stage_kind(self.kind).metrics)
            return result

    def _call(self) -> Any:
        log.info("stage %s: start (%s)", self.key, self.directory)
        return call_stage(self)

    def write_record(self, state: str, **extra: Any) -> None:
        """`extra`: e.g. the seconds the stage ran (its share of its job's cost)."""
        if not self.fingerprint:
            return
        merge_json(self.directory / STAGE_RECORD, {self.kind: {
            "fingerprint": self.fingerprint, "state": state, "fields": self.fields,
            "deps": dict(self.upstream), **extra}})

    def _set_aside_superseded(self) -> None:
        """Move this stage's outputs of an earlier fingerprint to `<name>.<old fingerprint>`."""
        record = self.superseded()
        if record is None:
            return
        old = str(record.get("fingerprint", "old"))
        moved = []
        for name in stage_kind(self.kind).outputs + tuple(p.name for p in self.markers()):
            path = self.directory / name
            if path.exists():
                moved.append(str(move_aside(path, f"superseded by {self.fingerprint}", old)))
        entry = stage_kind(self.kind)
        metrics_path = self.directory / "metrics.json"
        if entry.metrics and metrics_path.exists() and json_object_problem(metrics_path) is None:
            kept = metrics_path.with_name(f"metrics.json.{self.kind}.{old}")
            shutil.copyfile(metrics_path, kept)
            metrics = read_json(metrics_path)
            atomic_write_json(metrics_path, {k: v for k, v in metrics.items()
                                             if k not in entry.metrics})
            moved.append(str(kept))
        log.warning("stage %s: config changed (%s); earlier outputs kept as %s", self.key,
                    ", ".join(self.changed_fields()[:8]), ", ".join(moved) or "nothing")

    def _set_aside_invalid(self) -> None:
        if self.kind == "aggregate" or not all(p.exists() for p in self.markers()):
            return
        found = self.output_problem()
        if found is None:
            return
        path, problem = found
        kinds = self.shares if self.kind == "share" else (self.kind,)
        # a file that does not parse is kept aside; one that parses but lacks this stage's keys
        # (metrics.json is shared by the metric stages) is completed in place
        unreadable = any(output_problem(kind, self.directory, with_keys=False) for kind in kinds)
        moved = move_aside(path, problem) if unreadable else None
        for done in self.markers():
            move_aside(done, problem)
        log.warning("stage %s: %s; redoing it%s", self.key, problem,
                    f" (the invalid output is kept as {moved})" if moved else "")


def _marker_text(path: Path) -> str | None:
    """The aggregate marker's text through the bounded reader (None when it is not a small
    regular file: the aggregate is then redone)."""
    try:
        return read_text(path, limit=1 << 20, follow=False)
    except ReadError:
        return None


def _runs_text(experiment_dir: Path, runs: tuple[str, ...]) -> str:
    """The aggregate's marker: the runs it summarised and a digest of each run's metrics, so a
    redone evaluation makes the table stale."""
    digests: dict[str, str | None] = {}
    for run in runs:
        path = Path(experiment_dir) / "runs" / run / "metrics.json"
        try:  # the bounded reader: a FIFO or a link out of the tree there is "unreadable"
            data = read_bytes(path, JSON_LIMIT, follow=False)
            digests[run] = hashlib.sha256(data).hexdigest()[:16]
        except ReadError:
            digests[run] = "unreadable" if os.path.lexists(path) else None
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

def check_variants(cfg: ExperimentConfig) -> None:
    """ConfigError for a `variants` or `sweep.variants` entry no training stage makes."""
    made = trained_variants()
    for key, value in (("variants", cfg.variants), ("sweep.variants", cfg.sweep.variants)):
        if not set(value) <= set(made):
            raise ConfigError(f"{key}: {value!r} allowed: {', '.join(made)}")


def variants(cfg: ExperimentConfig) -> list[Variant]:
    """baseline and `variants` (sft, sft_dpo; each after the variant it starts from); with a
    sweep: baseline + the sweep points (+ the runs they start from, e.g. the SFT run of a DPO
    point, named like the point of the same overrides without the DPO ones)."""
    check_variants(cfg)
    out = [Variant("baseline", "baseline", cfg)]
    names = {"baseline"}
    if not (cfg.sweep.grid or cfg.sweep.zip):
        for name in cfg.variants:
            for entry in variant_stages(name):
                if entry.variant not in names:
                    start = stage_kind(entry.starts_from).variant if entry.starts_from else None
                    out.append(Variant(entry.variant, entry.variant, cfg, start=start))
                    names.add(entry.variant)
        return out
    for point in expand_sweep(cfg):
        entry = trained_variants()[point.variant]
        if entry.starts_from:
            before = stage_kind(entry.starts_from).variant
            own = (f"{entry.name}.", *NOT_START_KEYS)
            overrides = {k: v for k, v in point.overrides.items() if not k.startswith(own)}
            start = point_name(before, overrides) if overrides else before
            if start not in names:
                out.append(Variant(start, before, cfg.with_overrides(overrides)))
                names.add(start)
            out.append(Variant(point.name, point.variant, point.config, start=start))
        elif point.name not in names:
            out.append(Variant(point.name, point.variant, point.config))
        names.add(point.name)
    return out


def baseline_shared(cfg: ExperimentConfig) -> bool:
    """Greedy decoding makes the baseline identical across seeds: evaluate it once."""
    return not cfg.eval.generation.do_sample and len(cfg.seeds) > 1


def eval_stages(variant: Variant, seed: int, where: Path, after: tuple[str, ...],
                adapter: Path | None) -> list[Stage]:
    """The evaluation of one run: the stages of `eval.metrics` in registry order, those that read
    predictions after one generate stage, those that read the adapter after its training."""
    cfg = variant.config
    chosen = [REGISTRY[k] for k in REGISTRY if k in cfg.eval.metrics]
    stages: list[Stage] = []
    generate = Stage(GENERATE, variant.name, seed, where, cfg, after, adapter=adapter)
    if any(entry.reads == "predictions" for entry in chosen):
        stages.append(generate)
    for entry in chosen:
        if entry.reads == "adapter":
            stages.append(Stage(entry.name, variant.name, seed, where, cfg, after, adapter=adapter))
        elif entry.name == "epitome" and cfg.eval.epitome.checkpoints == "train":
            stages.append(Stage(entry.name, variant.name, seed, where, cfg,
                                (generate.key, EPITOME_TRAIN), source=epitome_checkpoints(cfg)))
        else:
            stages.append(Stage(entry.name, variant.name, seed, where, cfg, (generate.key,)))
    return stages


def epitome_checkpoints(cfg: ExperimentConfig) -> Path:
    """Where the `epitome_train` stage of `cfg` writes the classifiers (by fingerprint)."""
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
            if variant.kind != "baseline":
                train = training_stage(variant, seed, where)
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
    return Graph(exp, with_fingerprints(ordered), all_variants)


def training_stage(variant: Variant, seed: int, where: Path) -> Stage:
    """The stage that trains `variant`'s adapter for `seed`: from the base model, or continuing
    the adapter of the variant it starts from, of the same seed or of the one its kind's
    `seed_run` names (DPO: `dpo.sft_seed`)."""
    entry = trained_variants()[variant.kind]
    if not entry.starts_from or variant.start is None:
        return Stage(entry.name, variant.name, seed, where, variant.config)
    start, cfg = (hook(entry.seed_run)(variant.config, seed) if entry.seed_run
                  else (seed, variant.config))
    before = run_dir(variant.config.experiment_dir, variant.start, start)
    return Stage(entry.name, variant.name, seed, where, cfg,
                 (f"{entry.starts_from}/{variant.start}/seed-{start}",),
                 adapter=before / "adapter")


def with_fingerprints(ordered: list[Stage]) -> dict[str, Stage]:
    """The stages (dependencies first) with their fingerprints: the fields their kind depends on,
    models and data by content, and the fingerprints of the stages they read."""
    out: dict[str, Stage] = {}
    memo: dict[str, str] = {}
    for stage in ordered:
        entry = REGISTRY[stage.kind]
        fields = identity_fields(stage.config, entry.depends_on, entry.ignores, memo)
        upstream = tuple((dep, out[dep].fingerprint) for dep in stage.deps)
        out[stage.key] = dataclasses.replace(
            stage, fingerprint=fingerprint(stage.kind, fields, dict(upstream)), fields=fields,
            upstream=upstream)
    return out


# ----------------------------------------------------------------------------- running stages

class StageError(EmpoError):
    """One or more stages of a job failed (the first failure is the cause)."""


class StageCall:
    """A picklable job body: runs its stages in order in this process, skipping finished ones."""

    def __init__(self, stages: list[Stage] | tuple[Stage, ...]) -> None:
        self.stages = tuple(stages)

    def __call__(self) -> dict[str, str]:
        start_job_logging(self.stages)  # header, plain progress lines, each warning once
        try:
            return self._run_stages()
        finally:
            finish_streams()

    def _run_stages(self) -> dict[str, str]:
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
    if any(REGISTRY[stage.kind].checkpointable for stage in stages):
        return CheckpointableStageCall(stages)
    return StageCall(stages)
