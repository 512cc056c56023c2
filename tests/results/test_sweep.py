"""Sweeps: `sweep.grid` (product) and `sweep.zip` (position by position) -> one variant per point
and per `sweep.variants` entry."""
from __future__ import annotations

from pathlib import Path

import pytest

from empo.config import load_config
from empo.errors import ConfigError
from empo.results.sweep import expand_sweep, format_value

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = ROOT / "configs" / "sweeps"


def test_an_empty_grid_has_no_points(make_config):
    assert expand_sweep(make_config()) == []


def test_one_key_one_variant_per_value_with_the_value_set(make_config):
    cfg = make_config(sweep={"grid": {"lora.lora_alpha": [64, 128, 256]}, "variants": ["sft"]})
    points = expand_sweep(cfg)
    assert [p.name for p in points] == [
        "sft@lora.lora_alpha=64", "sft@lora.lora_alpha=128", "sft@lora.lora_alpha=256"]
    assert [p.config.lora.lora_alpha for p in points] == [64, 128, 256]
    assert [p.overrides for p in points] == [{"lora.lora_alpha": v} for v in (64, 128, 256)]
    assert {p.variant for p in points} == {"sft"}
    assert all(p.config.lora.r == cfg.lora.r for p in points)
    assert cfg.lora.lora_alpha == 256 and points[0].config is not cfg  # the base is untouched


def test_cartesian_product_in_key_order_points_outer_variants_inner(make_config):
    cfg = make_config(sweep={"grid": {"lora.r": [16, 32], "lora.lora_alpha": [4, 8, 16]},
                             "variants": ["sft", "sft_dpo"]})
    points = expand_sweep(cfg)
    assert len(points) == 2 * 3 * 2
    assert [p.name for p in points[:4]] == [
        "sft@lora.r=16,lora.lora_alpha=4", "sft_dpo@lora.r=16,lora.lora_alpha=4",
        "sft@lora.r=16,lora.lora_alpha=8", "sft_dpo@lora.r=16,lora.lora_alpha=8"]
    last = points[-1]
    assert last.name == "sft_dpo@lora.r=32,lora.lora_alpha=16"
    assert (last.variant, last.config.lora.r, last.config.lora.lora_alpha) == ("sft_dpo", 32, 16)


def test_float_values_are_named_as_written_and_set_as_floats(make_config):
    cfg = make_config(sweep={"grid": {"dpo.beta": [0.025, 1, 1e-5]}, "variants": ["sft_dpo"]})
    points = expand_sweep(cfg)
    assert [p.name for p in points] == [
        "sft_dpo@dpo.beta=0.025", "sft_dpo@dpo.beta=1", "sft_dpo@dpo.beta=1e-05"]
    assert [p.config.dpo.beta for p in points] == [0.025, 1.0, 1e-5]
    assert [format_value(v) for v in (True, None, 2.0, "cosine", [1, 2])] == [
        "true", "null", "2.0", "cosine", "[1,2]"]


def test_an_unknown_key_is_a_config_error_with_the_closest_key(tmp_path):
    path = tmp_path / "configs" / "x.yaml"
    path.parent.mkdir()
    path.write_text("sweep:\n  grid:\n    lora.lora_alfa: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"lora\.lora_alfa.*did you mean '(lora\.)?lora_alpha'"):
        load_config(path)


@pytest.mark.parametrize("grid, message", [
    ({"lora.r": [16, 0]}, r"sweep point 'sft@lora\.r=0': lora\.r: 0 is out of range"),
    ({"dpo.beta": ["high"]}, r"sweep point 'sft@dpo\.beta=high'.*dpo\.beta"),
    ({"lora.r": [16, 16]}, "appears twice"),
    ({"lora.r": []}, "non-empty list"),
    ({"seeds": [[1], [2]]}, "cannot be swept"),
    ({"data.source": ["a/b"]}, "run directory name"),
])
def test_bad_values_are_config_errors_naming_the_point(make_config, grid, message):
    cfg = make_config(sweep={"grid": grid, "variants": ["sft"]})
    with pytest.raises(ConfigError, match=message):
        expand_sweep(cfg)


# ---------------------------------------------------------------------------- sweep.zip

def test_zipped_keys_are_taken_pairwise_not_as_a_product(make_config):
    cfg = make_config(sweep={"zip": {"lora.r": [16, 32, 64], "lora.lora_alpha": [4, 8, 16]},
                             "variants": ["sft"]})
    points = expand_sweep(cfg)
    assert [p.name for p in points] == [
        "sft@lora.r=16,lora.lora_alpha=4", "sft@lora.r=32,lora.lora_alpha=8",
        "sft@lora.r=64,lora.lora_alpha=16"]
    assert [(p.config.lora.r, p.config.lora.lora_alpha) for p in points] == [
        (16, 4), (32, 8), (64, 16)]
    assert [p.overrides for p in points][1] == {"lora.r": 32, "lora.lora_alpha": 8}
    assert {p.zipped for p in points} == {("lora.r", "lora.lora_alpha")}


def test_zip_times_grid_zipped_outer_grid_inner_zipped_keys_first(make_config):
    cfg = make_config(sweep={"grid": {"dpo.beta": [0.01, 0.1]},
                             "zip": {"lora.r": [16, 32], "lora.lora_alpha": [4, 8]},
                             "variants": ["sft_dpo"]})
    assert [p.name for p in expand_sweep(cfg)] == [
        "sft_dpo@lora.r=16,lora.lora_alpha=4,dpo.beta=0.01",
        "sft_dpo@lora.r=16,lora.lora_alpha=4,dpo.beta=0.1",
        "sft_dpo@lora.r=32,lora.lora_alpha=8,dpo.beta=0.01",
        "sft_dpo@lora.r=32,lora.lora_alpha=8,dpo.beta=0.1"]


@pytest.mark.parametrize("sweep, message", [
    ({"zip": {"lora.r": [16, 32, 64], "lora.lora_alpha": [4, 8]}},
     r"sweep\.zip: the value lists must have equal lengths .*got lora\.r: 3, lora\.lora_alpha: 2"),
    ({"zip": {"lora.r": [16, 32]}, "grid": {"lora.r": [64]}},
     r"sweep: lora\.r in both sweep\.grid and sweep\.zip"),
    ({"zip": {"lora.rank": [16], "lora.lora_alpha": [4]}},
     r"unknown config key 'lora\.rank'.*did you mean"),
])
def test_bad_zips_are_refused_when_the_config_is_read(make_config, sweep, message):
    with pytest.raises(ConfigError, match=message):
        make_config(sweep={**sweep, "variants": ["sft"]})


@pytest.mark.parametrize("zipped, message", [
    ({"lora.r": [], "lora.lora_alpha": []}, r"sweep\.zip\.lora\.r: expected a non-empty list"),
    ({"seeds": [[1], [2]], "lora.r": [8, 16]}, r"sweep\.zip\.seeds: 'seeds' cannot be swept"),
    ({"lora.r": [16, 16], "lora.lora_alpha": [4, 4]}, "appears twice"),
    ({"lora.r": [16, 0], "lora.lora_alpha": [4, 0]},
     r"sweep point 'sft@lora\.r=0,lora\.lora_alpha=0': lora\.r: 0 is out of range"),
])
def test_bad_zipped_values_are_config_errors(make_config, zipped, message):
    cfg = make_config(sweep={"zip": zipped, "variants": ["sft"]})
    with pytest.raises(ConfigError, match=message):
        expand_sweep(cfg)


def test_a_dpo_point_over_a_zipped_sft_sweep_starts_from_its_sft_point(make_config):
    from empo.pipeline import variants

    cfg = make_config(sweep={"zip": {"lora.r": [16, 32], "lora.lora_alpha": [4, 8]},
                             "variants": ["sft", "sft_dpo"]})
    out = variants(cfg)
    assert [(v.name, v.kind, v.start) for v in out] == [
        ("baseline", "baseline", None),
        ("sft@lora.r=16,lora.lora_alpha=4", "sft", None),
        ("sft_dpo@lora.r=16,lora.lora_alpha=4", "sft_dpo", "sft@lora.r=16,lora.lora_alpha=4"),
        ("sft@lora.r=32,lora.lora_alpha=8", "sft", None),
        ("sft_dpo@lora.r=32,lora.lora_alpha=8", "sft_dpo", "sft@lora.r=32,lora.lora_alpha=8")]
    assert [(v.config.lora.r, v.config.lora.lora_alpha) for v in out[1:]] == [
        (16, 4), (16, 4), (32, 8), (32, 8)]


def test_a_beta_grid_over_zipped_ranks_trains_one_sft_run_per_zipped_point(make_config):
    from empo.pipeline import variants

    cfg = make_config(sweep={"zip": {"lora.r": [16, 32], "lora.lora_alpha": [4, 8]},
                             "grid": {"dpo.beta": [0.01, 0.1]}, "variants": ["sft_dpo"]})
    out = variants(cfg)
    assert {v.name: v.start for v in out if v.kind == "sft_dpo"} == {
        "sft_dpo@lora.r=16,lora.lora_alpha=4,dpo.beta=0.01": "sft@lora.r=16,lora.lora_alpha=4",
        "sft_dpo@lora.r=16,lora.lora_alpha=4,dpo.beta=0.1": "sft@lora.r=16,lora.lora_alpha=4",
        "sft_dpo@lora.r=32,lora.lora_alpha=8,dpo.beta=0.01": "sft@lora.r=32,lora.lora_alpha=8",
        "sft_dpo@lora.r=32,lora.lora_alpha=8,dpo.beta=0.1": "sft@lora.r=32,lora.lora_alpha=8"}
    assert {v.name: (v.config.lora.r, v.config.lora.lora_alpha)
            for v in out if v.kind == "sft"} == {
        "sft@lora.r=16,lora.lora_alpha=4": (16, 4), "sft@lora.r=32,lora.lora_alpha=8": (32, 8)}


def test_a_dpo_only_zipped_sweep_makes_one_sft_run_per_sft_relevant_point(make_config):
    from empo.pipeline import variants

    cfg = make_config(sweep={"zip": {"lora.r": [16, 32], "dpo.beta": [0.01, 0.1]},
                             "variants": ["sft_dpo"]})
    out = variants(cfg)
    assert [(v.name, v.start) for v in out if v.kind == "sft_dpo"] == [
        ("sft_dpo@lora.r=16,dpo.beta=0.01", "sft@lora.r=16"),
        ("sft_dpo@lora.r=32,dpo.beta=0.1", "sft@lora.r=32")]
    assert {v.name: v.config.lora.r for v in out if v.kind == "sft"} == {
        "sft@lora.r=16": 16, "sft@lora.r=32": 32}


# ---------------------------------------------------------------------------- configs/sweeps

def load_sweep(name: str):
    """The shipped sweep config; its cluster profile is the lead's and may land separately."""
    path = SWEEPS / f"{name}.yaml"
    overrides = [] if (ROOT / "configs" / "cluster" / "a100x2.yaml").exists() \
        else ["cluster.profile=null"]
    return load_config(path, overrides)


def test_fig1_sweeps_lora_alpha_around_r_over_4_for_sft():
    cfg = load_sweep("fig1_lora_alpha")
    points = expand_sweep(cfg)
    alphas = [p.config.lora.lora_alpha for p in points]
    assert cfg.lora.r == 1024 and 256 in alphas
    assert min(alphas) < cfg.lora.r / 4 < max(alphas)
    assert {p.variant for p in points} == {"sft"}
    assert "mmlu" in cfg.eval.metrics


def test_fig2_sweeps_lora_r_from_16_to_2048_with_alpha_r_over_4_for_sft():
    cfg = load_sweep("fig2_lora_rank")
    points = expand_sweep(cfg)
    assert len(points) == 8
    assert [p.config.lora.r for p in points] == [2 ** k for k in range(4, 12)]
    assert [p.config.lora.lora_alpha * 4 for p in points] == [p.config.lora.r for p in points]
    assert {p.variant for p in points} == {"sft"}
    assert "epitome" in cfg.eval.metrics


def test_fig2_fixed_alpha_sweeps_lora_r_with_alpha_256():
    cfg = load_sweep("fig2_lora_rank_fixed_alpha")
    points = expand_sweep(cfg)
    assert [p.config.lora.r for p in points] == [2 ** k for k in range(4, 12)]
    assert {p.config.lora.lora_alpha for p in points} == {256}
    assert {p.variant for p in points} == {"sft"} and "epitome" in cfg.eval.metrics


def test_fig3_sweeps_dpo_beta_around_0_025_over_four_seeds():
    cfg = load_sweep("fig3_dpo_beta")
    points = expand_sweep(cfg)
    betas = [p.config.dpo.beta for p in points]
    assert 0.025 in betas and max(betas) > 0.05 and betas == sorted(betas)
    assert {p.variant for p in points} == {"sft_dpo"} and len(cfg.seeds) == 4
    assert (cfg.lora.r, cfg.lora.lora_alpha) == (1024, 256)


@pytest.mark.parametrize("name", ["fig1_lora_alpha", "fig2_lora_rank",
                                  "fig2_lora_rank_fixed_alpha", "fig3_dpo_beta"])
def test_sweep_configs_pass_config_validate(name, capsys):
    from empo.cli import main

    assert main(["config", "validate", str(SWEEPS / f"{name}.yaml")]) == 0
    assert "valid" in capsys.readouterr().out
