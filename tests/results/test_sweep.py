"""Sweeps: `sweep.grid` -> one variant per point and per `sweep.variants` entry."""
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


def test_fig2_sweeps_lora_r_from_16_to_2048_for_sft():
    cfg = load_sweep("fig2_lora_rank")
    points = expand_sweep(cfg)
    assert [p.config.lora.r for p in points] == [2 ** k for k in range(4, 12)]
    assert {p.config.lora.lora_alpha for p in points} == {256}
    assert {p.variant for p in points} == {"sft"}
    assert "epitome" in cfg.eval.metrics


def test_fig3_sweeps_dpo_beta_around_0_025_over_four_seeds():
    cfg = load_sweep("fig3_dpo_beta")
    points = expand_sweep(cfg)
    betas = [p.config.dpo.beta for p in points]
    assert 0.025 in betas and max(betas) > 0.05 and betas == sorted(betas)
    assert {p.variant for p in points} == {"sft_dpo"} and len(cfg.seeds) == 4
    assert (cfg.lora.r, cfg.lora.lora_alpha) == (1024, 256)


@pytest.mark.parametrize("name", ["fig1_lora_alpha", "fig2_lora_rank", "fig3_dpo_beta"])
def test_sweep_configs_pass_config_validate(name, capsys):
    from empo.cli import main

    assert main(["config", "validate", str(SWEEPS / f"{name}.yaml")]) == 0
    assert "valid" in capsys.readouterr().out
