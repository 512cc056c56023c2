"""From stages to jobs: one job per training stage or per evaluation, arrays across seeds, and the
SLURM dependency each array waits on."""
from __future__ import annotations

from launchutil import finish_stage

from empo.launch.jobs import dependency, plan_arrays, plan_units
from empo.pipeline import build_graph


def submit_ids(arrays, first_id: int = 100):
    """What submitting the arrays in order would return: ids like sbatch gives them."""
    by_key = {a.key: a for a in arrays}
    job_ids, array_ids, deps = {}, {}, {}
    for number, plan in enumerate(arrays, start=first_id):
        deps[plan.key] = dependency(plan, by_key, job_ids, array_ids)
        if len(plan.units) > 1:
            array_ids[plan.key] = str(number)
            for index, unit in enumerate(plan.units):
                job_ids[unit.key] = f"{number}_{index}"
        else:
            job_ids[plan.units[0].key] = str(number)
    return deps, job_ids


def test_an_evaluation_is_one_job_and_training_stages_their_own(make_cfg):
    units = {u.key: u for u in plan_units(build_graph(make_cfg()))}
    assert [s.kind for s in units["eval/sft/seed-1"].stages] == [
        "generate", "epitome", "bertscore", "mmlu"]
    assert units["eval/sft/seed-1"].deps == ("sft/sft/seed-1",)
    assert units["dpo/sft_dpo/seed-2"].deps == ("sft/sft/seed-2",)
    assert units["share/baseline/seed-2"].deps == ("eval/baseline/seed-1",)
    assert "eval/baseline/seed-2" not in units  # greedy: shared, not evaluated again
    assert list(units)[-1] == "aggregate"


def test_like_jobs_across_seeds_form_arrays_that_wait_task_by_task(make_cfg):
    arrays = plan_arrays(plan_units(build_graph(make_cfg(seeds=[1, 2, 3]))))
    assert [(a.key, a.seeds) for a in arrays] == [
        ("sft/sft", [1, 2, 3]), ("dpo/sft_dpo", [1, 2, 3]), ("eval/baseline", [1]),
        ("share/baseline", [2, 3]), ("eval/sft", [1, 2, 3]), ("eval/sft_dpo", [1, 2, 3]),
        ("aggregate", [None])]
    deps, _ = submit_ids(arrays)
    assert deps["sft/sft"] is None and deps["eval/baseline"] is None
    assert deps["dpo/sft_dpo"] == "aftercorr:100"      # dpo seed s after sft seed s only
    assert deps["eval/sft"] == "aftercorr:100"
    assert deps["eval/sft_dpo"] == "aftercorr:101"
    assert deps["share/baseline"] == "afterok:102"
    # every evaluation, task by task: one failed evaluation cancels the aggregate at once
    assert deps["aggregate"] == ("afterok:102:103_0:103_1:104_0:104_1:104_2:"
                                 "105_0:105_1:105_2")


def test_a_partial_rerun_waits_on_exactly_the_jobs_it_needs(make_cfg):
    graph = build_graph(make_cfg(seeds=[1, 2, 3]))
    finish_stage(graph.stages["sft/sft/seed-1"])      # seed 1's SFT survived the first attempt
    finish_stage(graph.stages["sft/sft/seed-3"])
    arrays = plan_arrays(plan_units(graph))
    assert ("sft/sft", [2]) in [(a.key, a.seeds) for a in arrays]
    deps, job_ids = submit_ids(arrays)
    # seeds 1 and 3 can start at once, seed 2 after its SFT: the array waits for that one job
    assert deps["dpo/sft_dpo"] == f"afterok:{job_ids['sft/sft/seed-2']}"
    assert deps["eval/sft"] == f"afterok:{job_ids['sft/sft/seed-2']}"


def test_nothing_is_planned_when_everything_is_done(make_cfg):
    graph = build_graph(make_cfg(eval__metrics=["mmlu"]))
    for stage in graph:
        if stage.kind in ("sft", "dpo", "mmlu"):
            finish_stage(stage)
    units = plan_units(graph)
    assert [u.key for u in units] == ["share/baseline/seed-2", "aggregate"]
    assert units[0].deps == () and units[1].deps == ("share/baseline/seed-2",)
