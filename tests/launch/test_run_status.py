"""`empo status`: each stage's state from its marker, its manifest entry and its job's state;
a failed stage's dependants say why they never ran."""
from __future__ import annotations

from launchutil import finish_stage, manifest_jobs

from empo.launch.status import stage_statuses, summary
from empo.pipeline import build_graph


def test_a_failed_dpo_cancels_its_evaluation_and_the_aggregate_with_the_reason(make_cfg):
    graph = build_graph(make_cfg(seeds=[1]))
    jobs = manifest_jobs(graph)
    for stage in graph:
        if stage.variant in ("baseline", "sft"):
            finish_stage(stage)
    states = {jobs["dpo/sft_dpo/seed-1"]["job_id"]: "FAILED",
              jobs["generate/sft_dpo/seed-1"]["job_id"]: "CANCELLED by 0",
              jobs["aggregate"]["job_id"]: "CANCELLED by 0"}
    status = {s.key: s for s in stage_statuses(graph, jobs, states)}
    assert status["sft/sft/seed-1"].state == "done"
    assert status["dpo/sft_dpo/seed-1"].state == "failed"
    assert status["dpo/sft_dpo/seed-1"].log == jobs["dpo/sft_dpo/seed-1"]["stderr"]
    for key in ("generate/sft_dpo/seed-1", "epitome/sft_dpo/seed-1", "mmlu/sft_dpo/seed-1",
                "aggregate"):
        assert status[key].state == "cancelled", key
        assert status[key].reason == "dependency dpo/sft_dpo/seed-1 failed", key
    assert summary(list(status.values())).startswith("9 done, 1 failed, 5 cancelled")


def test_dependants_still_queued_behind_a_failure_say_they_will_never_start(make_cfg):
    graph = build_graph(make_cfg(seeds=[1]))
    jobs = manifest_jobs(graph)
    states = {entry["job_id"]: "PENDING" for entry in jobs.values()}
    states[jobs["sft/sft/seed-1"]["job_id"]] = "TIMEOUT"
    status = {s.key: s for s in stage_statuses(graph, jobs, states)}
    assert status["sft/sft/seed-1"].state == "failed" and "TIMEOUT" in status["sft/sft/seed-1"].reason
    assert status["dpo/sft_dpo/seed-1"].state == "pending"
    assert "dependency sft/sft/seed-1 failed" in status["dpo/sft_dpo/seed-1"].reason
    assert "never start" in status["generate/sft_dpo/seed-1"].reason
    assert status["generate/baseline/seed-1"].state == "pending"
    assert status["generate/baseline/seed-1"].reason == ""


def test_inside_a_failed_evaluation_job_stages_after_the_failure_did_not_run(make_cfg):
    graph = build_graph(make_cfg(seeds=[1]))
    jobs = manifest_jobs(graph)
    finish_stage(graph.stages["sft/sft/seed-1"])
    finish_stage(graph.stages["mmlu/sft/seed-1"])  # the job went on past the failed generation
    states = {jobs["generate/sft/seed-1"]["job_id"]: "FAILED"}
    status = {s.key: s for s in stage_statuses(graph, jobs, states)}
    assert status["generate/sft/seed-1"].state == "failed"
    assert status["epitome/sft/seed-1"].state == "not-run"
    assert status["epitome/sft/seed-1"].reason == "dependency generate/sft/seed-1 failed"
    assert status["mmlu/sft/seed-1"].state == "done"


def test_running_completed_without_marker_and_never_submitted(make_cfg):
    graph = build_graph(make_cfg(seeds=[1], eval__metrics=["mmlu"]))
    jobs = manifest_jobs(graph)
    sft = jobs["sft/sft/seed-1"]["job_id"]
    dpo = jobs.pop("dpo/sft_dpo/seed-1")["job_id"]
    status = {s.key: s for s in stage_statuses(graph, jobs, {sft: "RUNNING", dpo: "COMPLETED"})}
    assert status["sft/sft/seed-1"].state == "running"
    assert status["dpo/sft_dpo/seed-1"].state == "not-run"
    assert status["dpo/sft_dpo/seed-1"].reason == "not submitted"
    jobs["dpo/sft_dpo/seed-1"] = {"job_id": dpo, "executor": "slurm"}
    status = {s.key: s for s in stage_statuses(graph, jobs, {sft: "RUNNING", dpo: "COMPLETED"})}
    assert status["dpo/sft_dpo/seed-1"].state == "failed"
    assert "without writing DONE" in status["dpo/sft_dpo/seed-1"].reason


def test_a_stage_finished_under_another_identity_is_not_run_with_what_changed(make_cfg):
    # finished under dpo.beta=0.1; the experiment now says 0.2 (or its model's files changed):
    # its COMPLETED job did not fail, and the next submit redoes it
    before = build_graph(make_cfg(seeds=[1], dpo__beta=0.1))
    jobs = manifest_jobs(before)
    for stage in before:
        if stage.kind in ("sft", "dpo"):
            finish_stage(stage)
    graph = build_graph(make_cfg(seeds=[1], dpo__beta=0.2))
    sft, dpo = jobs["sft/sft/seed-1"]["job_id"], jobs["dpo/sft_dpo/seed-1"]["job_id"]
    status = {s.key: s for s in stage_statuses(graph, jobs, {sft: "COMPLETED", dpo: "COMPLETED"})}
    assert status["sft/sft/seed-1"].state == "done"
    assert status["dpo/sft_dpo/seed-1"].state == "not-run"
    assert status["dpo/sft_dpo/seed-1"].reason == (
        "finished under another identity, changed since: dpo.beta; the next run or submit "
        "redoes it")
    assert status["generate/sft_dpo/seed-1"].blocked_by is None  # not blamed on DPO
    # a job of the stage that failed is still the failure to act on
    status = {s.key: s for s in stage_statuses(graph, jobs, {dpo: "FAILED"})}
    assert status["dpo/sft_dpo/seed-1"].state == "failed"
