"""From the stage graph to jobs: which stages share a job, which jobs form an array, and the
SLURM dependency string of each array. Pure: no submission happens here.

A job runs one training stage (sft, dpo), one evaluation of a run (generate -> epitome,
bertscore, mmlu in one process: one allocation and one model-stack import; the markers still
record each stage), one baseline share, or the aggregate. Jobs of the same kind and variant
across seeds form one job array. An array waits on another with `aftercorr` (task i after task i:
seeds stay independent) when both hold the same seeds in the same order, else with `afterok` on
exactly the jobs/array tasks it needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from empo.pipeline import Graph, Stage
from empo.stages import REGISTRY


def job_kind(stage_kind: str) -> str:
    """The job a stage runs in (`empo.stages`): its own kind, or `eval` for generate and the
    metrics."""
    return REGISTRY[stage_kind].job


@dataclass(frozen=True)
class Unit:
    """One job's body: stages of one run (or the aggregate), run in order in one process."""

    kind: str                      # one of empo.stages.job_kinds()
    variant: str | None
    seed: int | None
    stages: tuple[Stage, ...]
    deps: tuple[str, ...] = ()     # keys of the pending units it waits for

    @property
    def key(self) -> str:
        return self.kind if self.variant is None else f"{self.kind}/{self.variant}/seed-{self.seed}"


@dataclass
class ArrayPlan:
    """Units of one kind and variant across seeds: one SLURM job array (a plain job if alone)."""

    kind: str
    variant: str | None
    units: list[Unit] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.kind if self.variant is None else f"{self.kind}/{self.variant}"

    @property
    def seeds(self) -> list[int | None]:
        return [unit.seed for unit in self.units]


def plan_units(graph: Graph, stages: list[Stage] | None = None) -> list[Unit]:
    """The jobs for `stages` (default: the graph's pending ones), in dependency order. Deps on
    stages that are done or not in `stages` are dropped: those are already on disk."""
    stages = graph.pending() if stages is None else stages
    grouped: dict[str, list[Stage]] = {}
    unit_of: dict[str, str] = {}
    for stage in stages:
        unit_key = Unit(job_kind(stage.kind), stage.variant, stage.seed, ()).key
        grouped.setdefault(unit_key, []).append(stage)
        unit_of[stage.key] = unit_key
    units = []
    for unit_key, members in grouped.items():
        deps = []
        for stage in members:
            for dep in stage.deps:
                owner = unit_of.get(dep)
                if owner is not None and owner != unit_key and owner not in deps:
                    deps.append(owner)
        first = members[0]
        units.append(Unit(job_kind(first.kind), first.variant, first.seed, tuple(members), tuple(deps)))
    return _toposort(units, key=lambda u: u.key, deps=lambda u: u.deps)


def plan_arrays(units: list[Unit]) -> list[ArrayPlan]:
    """Units grouped by (kind, variant) into arrays, ordered so every array follows its deps."""
    arrays: dict[str, ArrayPlan] = {}
    for unit in units:
        plan = arrays.setdefault(ArrayPlan(unit.kind, unit.variant).key,
                                 ArrayPlan(unit.kind, unit.variant))
        plan.units.append(unit)
    array_of = {unit.key: plan.key for plan in arrays.values() for unit in plan.units}

    def deps(plan: ArrayPlan) -> list[str]:
        return sorted({array_of[d] for u in plan.units for d in u.deps} - {plan.key})

    for plan in arrays.values():
        if any(array_of[d] == plan.key for u in plan.units for d in u.deps):
            raise ValueError(f"array {plan.key} depends on itself")  # impossible for our graphs
    return _toposort(list(arrays.values()), key=lambda p: p.key, deps=deps)


def dependency(plan: ArrayPlan, arrays: dict[str, ArrayPlan], job_ids: dict[str, str],
               array_ids: dict[str, str]) -> str | None:
    """The sbatch --dependency value for `plan`, given the ids of the jobs already submitted.

    job_ids: unit key -> job id (`123` or array task `123_4`); array_ids: array key -> id of a
    submitted array of two or more tasks.
    """
    afterok: list[str] = []
    corr: list[str] = []
    array_of = {u.key: key for key, p in arrays.items() for u in p.units}
    needed: dict[str, list[set[str]]] = {}
    for index, unit in enumerate(plan.units):
        for dep in unit.deps:
            per_task = needed.setdefault(array_of[dep], [set() for _ in plan.units])
            per_task[index].add(dep)
    for dep_key, per_task in needed.items():
        dep_plan = arrays[dep_key]
        aligned = (len(plan.units) > 1 and dep_key in array_ids
                   and plan.seeds == dep_plan.seeds
                   and all(per_task[i] == {dep_plan.units[i].key} for i in range(len(plan.units))))
        if aligned:
            corr.append(array_ids[dep_key])
        else:  # named task by task: one failed task cancels this job at once, not at array end
            for keys in per_task:
                for key in sorted(keys):
                    if job_ids[key] not in afterok:
                        afterok.append(job_ids[key])
    parts = (["afterok:" + ":".join(afterok)] if afterok else []) + [f"aftercorr:{c}" for c in corr]
    return ",".join(parts) or None


def _toposort(items: list, key, deps) -> list:
    """Stable topological order: each item after its deps, otherwise in the given order."""
    by_key = {key(item): item for item in items}
    done: set[str] = set()
    out = []
    remaining = list(items)
    while remaining:
        for item in remaining:
            if all(d in done or d not in by_key for d in deps(item)):
                out.append(item)
                done.add(key(item))
                remaining.remove(item)
                break
        else:
            raise ValueError(f"dependency cycle among {[key(i) for i in remaining]}")
    return out
