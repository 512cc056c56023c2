"""Per-stage identity: a changed config re-runs exactly the stages whose fingerprint changed, keeps
the rest, and moves superseded outputs aside under their old fingerprint (never deletes them)."""
from __future__ import annotations

import json
import shutil

import pytest
from launchutil import PROJECT_ROOT, finish_stage

from empo.config import load_config
from empo.launch.experiment import reruns
from empo.pipeline import build_graph

SMOKE = PROJECT_ROOT / "configs" / "experiments" / "smoke.yaml"
TINY = PROJECT_ROOT / "assets" / "tiny"


@pytest.fixture
def finished(tmp_path, tiny_assets):
    """The smoke experiment (on the session's tiny assets) with every stage finished by hand and
    recorded, then the aggregate run for real."""
    base = [f"results_dir={tmp_path}", f"assets={tiny_assets}",
            f"model.name_or_path={tiny_assets / 'model'}", f"data.source={tiny_assets / 'ed'}",
            f"eval.epitome.checkpoints={tiny_assets / 'epitome'}",
            f"eval.epitome.encoder={tiny_assets / 'epitome' / 'encoder'}",
            f"eval.epitome.tokenizer={tiny_assets / 'epitome' / 'encoder'}",
            f"eval.bertscore.model={tiny_assets / 'bertscore'}",
            f"eval.mmlu.include_path={tiny_assets / 'mmlu'}"]

    def load(*more: str):
        return load_config(SMOKE, [*base, *more])

    graph = build_graph(load())
    for stage in graph:
        if stage.kind not in ("share", "aggregate"):
            finish_stage(stage)
    for stage in graph:
        if stage.kind in ("share", "aggregate"):
            stage.run()
    assert build_graph(load()).pending() == []
    return load


def pending(cfg) -> set[str]:
    return {stage.key for stage in build_graph(cfg).pending()}


@pytest.mark.parametrize("override", [
    "cluster.executor=debug", "cluster.gpus_per_node=8", "cluster.time={sft: 999}",
    "cluster.container.runtime=podman", "sft.logging_steps=1", "sft.save_steps=3",
    "sft.save_total_limit=9", "sft.per_device_train_batch_size=2", "dpo.per_device_train_batch_size=1",
    "sft.deepspeed=zero3", "dpo.gradient_checkpointing=true", "eval.generation.batch_size=3",
    "eval.epitome.batch_size=5", "eval.bertscore.batch_size=7", "eval.mmlu.batch_size=2",
    "model.architecture=empo:models/mistral-7b.json",
])
def test_a_field_outside_every_fingerprint_reruns_nothing(finished, override):
    cfg = finished(override)
    assert pending(cfg) == set()
    assert reruns(build_graph(cfg)) == []


def test_more_seeds_add_runs_and_keep_the_finished_ones(finished):
    keys = pending(finished("seeds=[1, 2, 3]"))
    assert keys and all("seed-3" in key or key == "aggregate" for key in keys)


def test_epitome_checkpoints_rerun_only_the_epitome_stages_and_what_copies_them(finished, tmp_path,
                                                                                tiny_assets):
    other = tmp_path / "other-epitome"
    shutil.copytree(tiny_assets / "epitome", other)
    assert pending(finished(f"eval.epitome.checkpoints={other}")) == set()  # same files elsewhere
    (other / "finetuned_ER.pth").write_bytes((other / "finetuned_ER.pth").read_bytes() + b"x")
    cfg = finished(f"eval.epitome.checkpoints={other}")
    kinds = {key.split("/")[0] for key in pending(cfg)}
    assert kinds == {"epitome", "share", "aggregate"}
    assert len([k for k in pending(cfg) if k.startswith("epitome/")]) == 5  # baseline once
    lines = reruns(build_graph(cfg))
    assert any(line.startswith("epitome/sft/seed-1 re-runs: eval.epitome.checkpoints")
               for line in lines), lines


def test_dpo_beta_reruns_dpo_and_its_evaluations(finished):
    keys = pending(finished("dpo.beta=0.1"))
    assert {key.split("/")[1] for key in keys if "/" in key} == {"sft_dpo"}
    assert {key.split("/")[0] for key in keys} == {"dpo", "generate", "epitome", "bertscore",
                                                    "mmlu", "aggregate"}


def test_lora_rank_reruns_everything_but_the_baseline(finished):
    graph = build_graph(finished("lora.r=8"))
    keys = {stage.key for stage in graph.pending()}
    assert keys == {stage.key for stage in graph if stage.variant != "baseline"}


def test_the_model_by_path_or_by_a_copy_is_one_identity(finished, tmp_path, tiny_assets):
    copy = tmp_path / "copied-model"
    shutil.copytree(tiny_assets / "model", copy)
    assert pending(finished(f"model.name_or_path={copy}")) == set()
    config = json.loads((copy / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (copy / "config.json").write_text(json.dumps(config))
    assert "sft/sft/seed-1" in pending(finished(f"model.name_or_path={copy}"))


def test_a_superseded_output_is_moved_aside_under_its_old_fingerprint(finished):
    before = build_graph(finished())
    table = before.stages["aggregate"]
    old = (table.directory / "table.csv").read_bytes()
    cfg = finished("eval.bertscore.num_layers=1")
    graph = build_graph(cfg)
    for stage in graph.pending():
        if stage.kind == "bertscore":
            finish_stage(stage, value=0.05)
    graph.stages["share/baseline/seed-2"].run()
    graph.stages["aggregate"].run()
    assert graph.pending() == []
    aside = table.directory / f"table.csv.{table.fingerprint}-1"
    assert aside.read_bytes() == old
    assert (table.directory / "table.csv").read_bytes() != old
    sft = graph.stages["bertscore/sft/seed-1"]
    assert json.loads((sft.directory / "stage.json").read_text())["bertscore"]["fingerprint"] \
        == sft.fingerprint
