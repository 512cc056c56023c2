"""results/<name>/experiment.yaml: the resolved config and its hash; a directory of another hash
is refused, or moved aside whole with --force-new."""
from __future__ import annotations

import pytest

from empo.errors import LaunchError
from empo.launch.experiment import check_experiment_dir, stored_hash, write_experiment
from empo.results.aggregate import experiment_config


def test_experiment_yaml_records_the_resolved_config_and_its_hash(make_cfg):
    cfg = make_cfg(lora__r=8)
    write_experiment(cfg)
    path = cfg.experiment_dir / "experiment.yaml"
    assert path.read_text().startswith(f"# config hash: {cfg.config_hash()}\n")
    assert stored_hash(cfg.experiment_dir) == cfg.config_hash()
    again = experiment_config(cfg.experiment_dir)  # loadable: `empo run results/t/experiment.yaml`
    assert again.lora.r == 8 and again.config_hash() == cfg.config_hash()


def test_seeds_and_cluster_may_change_on_the_same_results(make_cfg):
    write_experiment(make_cfg())
    cfg = make_cfg(seeds=[1, 2, 3], cluster__partition="other")
    assert check_experiment_dir(cfg) == cfg.config_hash()
    write_experiment(cfg)
    assert "- 3" in (cfg.experiment_dir / "experiment.yaml").read_text()


def test_another_config_is_refused_naming_both_hashes_and_what_changed(make_cfg):
    old = make_cfg()
    write_experiment(old)
    (old.experiment_dir / "runs").mkdir()
    new = make_cfg(lora__r=8, dpo__beta=0.1)
    with pytest.raises(LaunchError) as err:
        write_experiment(new)
    message = str(err.value)
    assert old.config_hash() in message and new.config_hash() in message
    assert "lora.r" in message and "dpo.beta" in message and "--force-new" in message
    assert stored_hash(old.experiment_dir) == old.config_hash()  # nothing touched


def test_force_new_moves_the_old_results_aside_and_starts_afresh(make_cfg):
    old = make_cfg()
    write_experiment(old)
    (old.experiment_dir / "runs" / "sft").mkdir(parents=True)
    (old.experiment_dir / "runs" / "sft" / "kept.txt").write_text("finished work")
    new = make_cfg(lora__r=8)
    moved = write_experiment(new, force_new=True)
    assert moved == old.experiment_dir.with_name(f"t.{old.config_hash()}")
    assert (moved / "runs" / "sft" / "kept.txt").read_text() == "finished work"
    assert stored_hash(moved) == old.config_hash()
    assert stored_hash(new.experiment_dir) == new.config_hash()
    assert not (new.experiment_dir / "runs").exists()
    # a second clash with the same old hash does not overwrite the first one moved aside
    write_experiment(old, force_new=True)
    assert (moved / "runs" / "sft" / "kept.txt").exists()
    assert moved.with_name(f"t.{new.config_hash()}").is_dir()
