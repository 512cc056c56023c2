"""A stage kind and a metric are one declaration each: a training stage (`dummy_po`, variant
`sft_dummy`, continuing the SFT adapter) and an eval stage writing a new metric (`dummy_len`),
registered here and nowhere else, reach the graph, the jobs, preflight, the sbatch wrappers, the
status table and the results table."""
from __future__ import annotations

import csv
import dataclasses
import json

import pytest
from fakes import fake_training
from launchutil import finish_stage, write_config

from empo.config import load_config
from empo.hub import Asset
from empo.launch.jobs import plan_units
from empo.launch.preflight import preflight
from empo.launch.status import stage_statuses
from empo.launch.wrapper import (parse_wrapper_args, stage_argv, stage_keys, tasks_per_node,
                                 wrappers)
from empo.metrics import register_metric, unregister_metric
from empo.pipeline import build_graph
from empo.results.aggregate import aggregate
from empo.stages import StageKind, register_stage, training, unregister_stage
from empo.store import claim_experiment_dir, mark_done


def lexicon(cfg, kind: str) -> list[Asset]:
    """The dummy metric's asset: a word list that is not there."""
    return [Asset("eval.dummy_lexicon", "file", "missing.txt", cfg.resolve("missing.txt"))]


def too_big(cfg, kind: str, variant: str, **facts) -> list[tuple[str, str, str]]:
    """The dummy training stage's own preflight check, always failing."""
    return [(f"{kind}.size", f"{kind} ({variant}, {facts['sequences']} sequences) is too big",
             "make it smaller")]


@pytest.fixture
def declared():
    """The two declarations (and the metric's), removed again after the test."""
    register_stage(dataclasses.replace(
        training("dummy_po", "nowhere:train", "Dummy", "a dummy preference stage",
                 variant="sft_dummy", starts_from="sft", pairs=True),
        preflight="test_new_stage_kind:too_big", assets=None))  # no config section of its own
    register_stage(StageKind("dummy_len", "nowhere:score", job="eval", resources="eval",
                             time_key="eval", depends_on=("eval.generation",),
                             reads="predictions", assets="test_new_stage_kind:lexicon"))
    register_metric("dummy_len", "Length", "dummy_len", higher_is_better=False)
    yield
    unregister_stage("dummy_po")
    unregister_stage("dummy_len")
    unregister_metric("dummy_len")


def test_a_declared_stage_and_metric_reach_every_layer(declared, tmp_path):
    path = write_config(tmp_path, {"variants": ["sft_dummy"], "eval.metrics": ["dummy_len"],
                                   "cluster.gpus_per_node": 0, "cluster.offline": False})
    cfg = load_config(path)
    graph = build_graph(cfg)

    # graph: trained from the same seed's SFT adapter, scored after generate
    train = graph.stages["dummy_po/sft_dummy/seed-2"]
    assert train.deps == ("sft/sft/seed-2",) and train.adapter.parent.parent.name == "sft"
    assert graph.stages["dummy_len/sft_dummy/seed-1"].deps == ("generate/sft_dummy/seed-1",)

    # jobs: its own training job; the metric in the variant's eval job
    units = {unit.key: unit for unit in plan_units(graph)}
    assert any(u.kind == "dummy_po" for u in units.values())
    evals = [u for u in units.values() if u.kind == "eval" and u.variant == "sft_dummy"]
    assert evals and all({"generate", "dummy_len"} <= {s.kind for s in u.stages} for u in evals)

    # preflight: the stage's own check and the metric's asset
    problems = {p.key: p.what for p in preflight(cfg, "local", graph)}
    assert problems["dummy_po.size"] == "dummy_po (sft_dummy, 2 sequences) is too big"
    assert "does not exist" in problems["eval.dummy_lexicon"]

    # sbatch wrappers: the generic training wrapper, one task per GPU; the metric in eval.sbatch
    assert "dummy_po" in wrappers()
    args = parse_wrapper_args("train", [str(path), "stage=dummy_po", "seed=1"])
    assert stage_argv(args)[-4:] == ["--variant", "sft_dummy", "--seed", "1"]
    assert tasks_per_node("dummy_po", {"SLURM_GPUS_ON_NODE": "4"}) == 4
    assert tasks_per_node("dummy_len", {"SLURM_GPUS_ON_NODE": "4"}) == 1
    eval_args = parse_wrapper_args("eval", [str(path), "variant=sft_dummy", "seed=1"])
    assert "dummy_len/sft_dummy/seed-1" in stage_keys(cfg, eval_args)

    # finished by hand as the stages would leave them; then status and the table
    claim_experiment_dir(cfg.experiment_dir)
    for stage in graph:
        if stage.kind in ("sft", "generate"):
            finish_stage(stage)
        elif stage.kind.startswith("dummy"):
            stage.directory.mkdir(parents=True, exist_ok=True)
            if stage.kind == "dummy_po":
                fake_training(stage.directory)
            else:
                metrics = {"dummy_len": float(stage.seed)}
                (stage.directory / "metrics.json").write_text(json.dumps(metrics))
                mark_done(stage.directory, "dummy_len")
            stage.write_record("done")
    states = {s.key: s.state for s in stage_statuses(graph, {}, {})}
    assert states["dummy_po/sft_dummy/seed-1"] == states["dummy_len/sft_dummy/seed-2"] == "done"

    table = aggregate(cfg.experiment_dir, cfg)
    rows = {row["variant"]: row for row in csv.DictReader(table.open())}
    assert list(rows) == ["baseline", "sft", "sft_dummy"]
    assert float(rows["sft_dummy"]["dummy_len_mean"]) == 1.5
    markdown = (cfg.experiment_dir / "table.md").read_text()
    assert "Length ↓" in markdown and "| SFT+Dummy | 2 |" in markdown
