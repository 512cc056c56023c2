"""The stage graph: which stages an experiment has, in what order, and what counts as done."""
from __future__ import annotations

import json
import os
import pickle
import socket

import cloudpickle
import pytest
from submitit.helpers import Checkpointable, DelayedSubmission

from empo.distributed import distributed_env, process_rank
from empo.pipeline import (CheckpointableStageCall, StageCall, StageError, build_graph,
                           stage_call, variants)
from empo.store import is_done
from launchutil import finish_all_but, finish_stage


def keys(graph, kind=None):
    return [s.key for s in graph if kind is None or s.kind == kind]


def test_each_seed_has_baseline_eval_sft_then_dpo_and_their_evals(make_cfg):
    graph = build_graph(make_cfg(eval__generation__do_sample=True))
    for seed in (1, 2):
        tag = f"seed-{seed}"
        assert graph.stages[f"sft/sft/{tag}"].deps == ()
        assert graph.stages[f"dpo/sft_dpo/{tag}"].deps == (f"sft/sft/{tag}",)
        sft_dir = graph.stages[f"sft/sft/{tag}"].directory
        assert graph.stages[f"dpo/sft_dpo/{tag}"].adapter == sft_dir / "adapter"
        for variant, training in (("baseline", ()), ("sft", (f"sft/sft/{tag}",)),
                                  ("sft_dpo", (f"dpo/sft_dpo/{tag}",))):
            generate = graph.stages[f"generate/{variant}/{tag}"]
            assert generate.deps == training
            assert graph.stages[f"epitome/{variant}/{tag}"].deps == (generate.key,)
            assert graph.stages[f"bertscore/{variant}/{tag}"].deps == (generate.key,)
            assert graph.stages[f"mmlu/{variant}/{tag}"].deps == training
    assert graph.stages["generate/baseline/seed-1"].adapter is None
    dpo_dir = graph.stages["dpo/sft_dpo/seed-2"].directory
    assert graph.stages["mmlu/sft_dpo/seed-2"].adapter == dpo_dir / "adapter"
    aggregate = graph.stages["aggregate"]
    evals = [s.key for s in graph if s.kind in ("generate", "epitome", "bertscore", "mmlu")]
    assert set(aggregate.deps) == set(evals)
    assert keys(graph)[-1] == "aggregate"
    seen = set()
    for stage in graph:  # every stage comes after what it reads
        assert set(stage.deps) <= seen, stage.key
        seen.add(stage.key)


def test_greedy_baseline_is_evaluated_once_and_shared_with_the_other_seeds(make_cfg):
    graph = build_graph(make_cfg(seeds=[1, 2, 3]))
    assert [s.seed for s in graph if s.variant == "baseline" and s.kind == "generate"] == [1]
    shares = [s for s in graph if s.kind == "share"]
    assert [s.seed for s in shares] == [2, 3]
    assert set(shares[0].deps) == {f"{k}/baseline/seed-1" for k in ("generate", "epitome",
                                                                     "bertscore", "mmlu")}
    assert shares[0].shares == ("generate", "epitome", "bertscore", "mmlu")
    assert {"share/baseline/seed-2", "share/baseline/seed-3"} <= set(graph.stages["aggregate"].deps)
    # trained variants always depend on the seed
    assert [s.seed for s in graph if s.variant == "sft" and s.kind == "generate"] == [1, 2, 3]


def test_sampling_evaluates_the_baseline_for_every_seed(make_cfg):
    graph = build_graph(make_cfg(eval__generation__do_sample=True))
    assert [s.seed for s in graph if s.variant == "baseline" and s.kind == "generate"] == [1, 2]
    assert not [s for s in graph if s.kind == "share"]


def test_only_the_configured_metrics_are_stages(make_cfg):
    graph = build_graph(make_cfg(eval__metrics=["mmlu"]))
    assert {s.kind for s in graph} == {"sft", "dpo", "mmlu", "share", "aggregate"}
    graph = build_graph(make_cfg(eval__metrics=["bertscore"]))
    assert {s.kind for s in graph} == {"sft", "dpo", "generate", "bertscore", "share", "aggregate"}


def test_sweep_variants_are_the_baseline_and_the_points_with_the_sft_runs_they_need(make_cfg):
    cfg = make_cfg(sweep__grid={"lora.r": [8, 16]}, sweep__variants=["sft_dpo"])
    assert [v.name for v in variants(cfg)] == [
        "baseline", "sft@lora.r=8", "sft_dpo@lora.r=8", "sft@lora.r=16", "sft_dpo@lora.r=16"]
    graph = build_graph(cfg)
    dpo = graph.stages["dpo/sft_dpo@lora.r=16/seed-2"]
    assert dpo.deps == ("sft/sft@lora.r=16/seed-2",)
    assert dpo.config.lora.r == 16
    assert graph.stages["sft/sft@lora.r=16/seed-2"].config.lora.r == 16
    assert "sft/sft/seed-1" not in graph.stages and "dpo/sft_dpo/seed-1" not in graph.stages


def test_a_dpo_beta_sweep_trains_one_sft_run_per_seed(make_cfg):
    cfg = make_cfg(sweep__grid={"dpo.beta": [0.01, 0.1]}, sweep__variants=["sft_dpo"])
    names = [v.name for v in variants(cfg)]
    assert names == ["baseline", "sft", "sft_dpo@dpo.beta=0.01", "sft_dpo@dpo.beta=0.1"]
    graph = build_graph(cfg)
    assert graph.stages["dpo/sft_dpo@dpo.beta=0.1/seed-1"].deps == ("sft/sft/seed-1",)
    assert graph.stages["dpo/sft_dpo@dpo.beta=0.1/seed-1"].config.dpo.beta == 0.1
    assert len([s for s in graph if s.kind == "sft"]) == 2  # one per seed, shared by both betas


def test_a_sweep_point_of_both_variants_is_trained_once(make_cfg):
    cfg = make_cfg(sweep__grid={"lora.lora_alpha": [4, 64]})
    names = [v.name for v in variants(cfg)]
    assert names == ["baseline", "sft@lora.lora_alpha=4", "sft_dpo@lora.lora_alpha=4",
                     "sft@lora.lora_alpha=64", "sft_dpo@lora.lora_alpha=64"]
    assert len([s for s in build_graph(cfg) if s.kind == "sft"]) == 4


def test_finished_stages_are_not_pending_and_nothing_else_is_skipped(make_cfg):
    graph = build_graph(make_cfg())
    total = len(graph.pending())
    finish_stage(graph.stages["sft/sft/seed-1"])
    finish_stage(graph.stages["generate/sft/seed-1"])
    pending = {s.key for s in graph.pending()}
    assert len(pending) == total - 2
    assert "sft/sft/seed-1" not in pending and "epitome/sft/seed-1" in pending


def test_the_baseline_share_copies_the_first_seed_and_the_aggregate_sd_is_zero(make_cfg):
    cfg = make_cfg(eval__metrics=["bertscore", "mmlu"])
    graph = build_graph(cfg)
    finish_all_but(graph, keep=set(), value_of=lambda s: 0.01 * (s.seed or 0))
    share = graph.stages["share/baseline/seed-2"]
    assert not share.is_done()
    share.run()
    assert share.is_done()
    target, source = share.directory, share.source
    assert (target / "metrics.json").read_text() == (source / "metrics.json").read_text()
    assert (target / "predictions.jsonl").read_text() == (source / "predictions.jsonl").read_text()
    assert json.loads((target / "shared_from.json").read_text())["shared_from"] == "seed-1"
    aggregate = graph.stages["aggregate"]
    aggregate.run()
    assert aggregate.is_done()
    lines = (cfg.experiment_dir / "table.csv").read_text().splitlines()
    rows = {r.split(",")[0]: r.split(",") for r in lines}
    header = rows["variant"]
    baseline = dict(zip(header, rows["baseline"]))
    sft = dict(zip(header, rows["sft"]))
    assert baseline["n"] == "2" and float(baseline["fbert_sd"]) == 0.0
    assert float(sft["fbert_sd"]) > 0  # seeds differ for trained variants


def test_the_aggregate_is_redone_when_its_runs_change(make_cfg):
    cfg = make_cfg(eval__metrics=["mmlu"], seeds=[1])
    graph = build_graph(cfg)
    finish_all_but(graph, keep=set())
    graph.stages["aggregate"].run()
    assert graph.stages["aggregate"].is_done()
    more = build_graph(make_cfg(eval__metrics=["mmlu"], seeds=[1, 2]))
    assert not more.stages["aggregate"].is_done()  # seed 2 joins the table: aggregate again


def test_job_bodies_are_picklable_and_training_and_generation_are_checkpointable(make_cfg):
    graph = build_graph(make_cfg())
    sft = stage_call([graph.stages["sft/sft/seed-1"]])
    evaluation = stage_call([s for s in graph if s.variant == "sft" and s.seed == 1
                             and s.kind != "sft"])
    metrics_only = stage_call([graph.stages["mmlu/sft/seed-1"]])
    aggregate = stage_call([graph.stages["aggregate"]])
    assert isinstance(sft, CheckpointableStageCall) and isinstance(sft, Checkpointable)
    assert isinstance(evaluation, CheckpointableStageCall)  # holds generate
    assert type(metrics_only) is StageCall and type(aggregate) is StageCall
    again = pickle.loads(cloudpickle.dumps(sft))
    assert [s.key for s in again.stages] == ["sft/sft/seed-1"]
    resubmit = again.checkpoint()
    assert isinstance(resubmit, DelayedSubmission) and resubmit.function is again


def test_a_job_body_skips_what_is_done(make_cfg):
    graph = build_graph(make_cfg(eval__metrics=["mmlu"]))
    finish_all_but(graph, keep=set())
    call = stage_call([graph.stages["mmlu/sft/seed-1"], graph.stages["share/baseline/seed-2"]])
    assert call() == {"mmlu/sft/seed-1": "skipped (done)", "share/baseline/seed-2": "done"}
    assert is_done(graph.stages["share/baseline/seed-2"].directory, "mmlu")


def test_distributed_env_comes_from_the_job_only_with_several_tasks(monkeypatch):
    for name in ("SUBMITIT_EXECUTOR", "SLURM_STEP_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                 "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(name, "")  # recorded, so the test leaves the environment as it was
        monkeypatch.delenv(name)
    assert distributed_env() == {}  # a plain process: no distributed variables at all
    assert distributed_env(process_group=True)["WORLD_SIZE"] == "1"  # DeepSpeed: rank 0 of 1
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4242")
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "1")
    assert distributed_env() == {} and process_rank() == 0
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "2")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "1")
    monkeypatch.setenv("SUBMITIT_LOCAL_LOCALID", "1")
    env = distributed_env()
    assert env["RANK"] == "1" and env["WORLD_SIZE"] == "2" and env["LOCAL_RANK"] == "1"
    assert env["MASTER_ADDR"] == socket.gethostname() and int(env["MASTER_PORT"]) >= 20000
    assert process_rank() == 1 and "RANK" not in os.environ  # read, not exported
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_a_failed_stage_in_a_job_stops_what_needs_it_but_not_the_others(make_cfg):
    graph = build_graph(make_cfg(eval__metrics=["bertscore", "mmlu"], seeds=[1]))
    finish_stage(graph.stages["sft/sft/seed-1"])
    finish_stage(graph.stages["mmlu/sft/seed-1"])
    sft_dir = graph.stages["generate/sft/seed-1"].directory
    # generation fails (the default model is not available offline); bertscore needs its
    # predictions and does not run; mmlu does not need them (here: already done)
    call = stage_call([graph.stages[k] for k in ("generate/sft/seed-1", "bertscore/sft/seed-1",
                                                 "mmlu/sft/seed-1")])
    with pytest.raises(StageError, match=r"1 stage\(s\) failed \(generate/sft/seed-1: ") as err:
        call()
    assert err.value.__cause__ is not None
    assert not is_done(sft_dir, "bertscore") and is_done(sft_dir, "mmlu")
