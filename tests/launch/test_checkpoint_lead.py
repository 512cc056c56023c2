"""The checkpoint a training stage writes, the requeue signal's lead that fits it (issue 23.4),
and preflight's refusal of a time limit shorter than lead + write."""
from __future__ import annotations

import dataclasses
import math

from empo.launch.preflight import check_signal_lead
from empo.pipeline import build_graph
from empo.train.memory import Plan, checkpoint_plan


def plan_of(stage: str, lora_params: int) -> Plan:
    """A plan whose only fact that matters here is the trainable parameter count."""
    blank = {f.name: None for f in dataclasses.fields(Plan) if f.default is dataclasses.MISSING}
    return Plan(**{**blank, "stage": stage, "lora_params": lora_params, "memory": {}})


def test_checkpoint_size_write_time_and_the_derived_lead(make_cfg):
    params = 2_946_498_560  # table1's r=1024 LoRA on Mistral-7B (empo plan)
    plain = checkpoint_plan(make_cfg(sft__deepspeed="none"), plan_of("sft", params))
    assert plain.size == 12 * params and math.isclose(plain.write_s, 12 * params / 0.5e9)
    assert plain.derived and plain.lead_s == math.ceil(1.5 * plain.write_s) + 30  # 137 s > 90
    zero2 = checkpoint_plan(make_cfg(sft__deepspeed="zero2", cluster__checkpoint_gb_per_s=2.0),
                            plan_of("sft", params))
    assert zero2.size == 16 * params and math.isclose(zero2.write_s, 16 * params / 2e9)
    assert zero2.lead_s == max(90, math.ceil(1.5 * zero2.write_s) + 30)
    small = checkpoint_plan(make_cfg(), plan_of("sft", 1_000_000))
    assert small.lead_s == 90  # never below submitit's own lead
    given = checkpoint_plan(make_cfg(cluster__signal_lead_s=600), plan_of("sft", params))
    assert (given.lead_s, given.derived) == (600, False)
    assert "cluster.checkpoint_gb_per_s" in given.text() and "600 s" in given.text()


def test_preflight_refuses_a_time_limit_shorter_than_the_signal_lead_plus_the_save(make_cfg):
    short = make_cfg(cluster__time={"sft": 1, "dpo": 30, "eval": 30, "aggregate": 10})
    [problem] = check_signal_lead(short, build_graph(short).pending())
    assert problem.key == "cluster.time.sft" and "90 s" in problem.what
    assert "above 2 min" in problem.fix
    lead = make_cfg(cluster__signal_lead_s=2000)  # 33 min 20 s before the 60 min default limits
    assert not check_signal_lead(lead, build_graph(lead).pending())
    late = make_cfg(cluster__signal_lead_s=4000)
    assert {p.key for p in check_signal_lead(late, build_graph(late).pending())} >= {
        "cluster.time.sft", "cluster.time.dpo"}


def test_preflight_warns_when_save_steps_loses_more_than_a_tenth_of_a_stage(make_cfg, caplog,
                                                                            tiny_assets):
    from empo.launch.preflight import warn_lost_share

    data = str(tiny_assets / "ed")
    cfg = make_cfg(sft__save_steps=10_000, data__source=data)
    with caplog.at_level("WARNING", logger="empo.launch.preflight"):
        assert warn_lost_share(cfg, "sft") == 1.0
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("sft.save_steps 10000: a preemption loses up to") and "100%" in line
    caplog.clear()
    assert warn_lost_share(make_cfg(sft__save_steps=1, sft__num_train_epochs=20,
                                    data__source=data), "sft") <= 0.10
    assert not caplog.records
    assert warn_lost_share(cfg, "generate") is None  # no save_steps
