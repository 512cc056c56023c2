"""The experiment config: YAML + dotted overrides -> validated typed object with a stable hash."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from empo.cli import main
from empo.config import SEVEN_PROJECTIONS, load_config, parse_override
from empo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TABLE1 = ROOT / "configs/experiments/table1.yaml"
SMOKE = ROOT / "configs/experiments/smoke.yaml"


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "configs").mkdir(exist_ok=True)
    path = tmp_path / "configs" / "exp.yaml"
    path.write_text(text)
    return path


def test_table1_has_the_papers_settings():
    cfg = load_config(TABLE1)
    assert cfg.model.name_or_path == "alignment-handbook/zephyr-7b-sft-full"
    assert (cfg.lora.r, cfg.lora.lora_alpha) == (1024, 256)
    assert cfg.lora.target_modules == SEVEN_PROJECTIONS
    assert cfg.sft.learning_rate == 1e-5 and cfg.sft.num_train_epochs == 1
    assert cfg.sft.lr_scheduler_type == "cosine" and cfg.sft.warmup_ratio == 0.0
    assert cfg.dpo.beta == 0.025 and cfg.dpo.num_train_epochs == 3 and cfg.dpo.learning_rate == 1e-5
    assert cfg.sft.global_batch_size == cfg.dpo.global_batch_size == 64
    assert cfg.seeds == [1, 2, 3, 4]
    assert cfg.eval.mmlu.num_fewshot == 5
    assert cfg.cluster.gpus_per_node == 2  # from the a100x2 profile


def test_dotted_overrides_are_typed():
    cfg = load_config(SMOKE, ["lora.r=512", "seeds=[1,2,3]", "dpo.beta=0.1", "data.system_prompt=null"])
    assert cfg.lora.r == 512 and cfg.seeds == [1, 2, 3] and cfg.dpo.beta == 0.1
    assert cfg.data.system_prompt is None


def test_int_given_for_float_becomes_float():
    assert isinstance(load_config(SMOKE, ["dpo.beta=1"]).dpo.beta, float)


@pytest.mark.parametrize(
    "override, message",
    [
        ("lora.rr=3", "unknown config key 'lora.rr'; did you mean 'lora.r'?"),
        ("lorra.r=3", "unknown config key 'lorra'; did you mean 'lora'?"),
        ("lora.r", "malformed override 'lora.r'"),
        ("=3", "malformed override '=3'"),
        ("lora.r=[1", "malformed override 'lora.r=[1'"),
        ("lora.r=0", "lora.r: 0 is out of range; allowed: 1 <= value <= 65536"),
        ("lora.lora_alpha=-4", "lora.lora_alpha: -4 is out of range; allowed: 1 <= value"),
        ("lora.r=abc", "lora.r: expected int, got 'abc'"),
        ("sft.bf16=3", "sft.bf16: expected true/false"),
        ("data.sampling=greedy", "data.sampling: 'greedy' must be balanced or uniform"),
        ("lora.r.x=1", "config key 'lora.r' has no sub-keys"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, [override])
    assert message in str(err.value)


def test_unknown_key_in_file_names_path_and_closest(tmp_path):
    path = write(tmp_path, "name: x\neval:\n  generation:\n    max_new_tokenz: 3\n")
    with pytest.raises(ConfigError, match=r"eval\.generation\.max_new_tokenz'; did you mean "
                                          r"'eval\.generation\.max_new_tokens'"):
        load_config(path)


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "name: x\nlora:\n  r: [1\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml:\d+: invalid YAML"):
        load_config(path)


def test_hash_is_stable_and_ignores_seeds_and_cluster():
    base = load_config(SMOKE).config_hash()
    assert base == load_config(SMOKE).config_hash()
    assert base == load_config(SMOKE, ["seeds=[7]", "cluster.executor=debug"]).config_hash()
    assert base != load_config(SMOKE, ["lora.r=8"]).config_hash()
    assert len(base) == 12


def test_relative_paths_resolve_from_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(SMOKE)
    assert cfg.resolve(cfg.data.emotion_table) == ROOT / "empo/defaults/emotions/plutchik.tsv"
    assert cfg.experiment_dir == ROOT / "results" / "smoke"


def test_with_overrides_revalidates():
    cfg = load_config(SMOKE)
    assert cfg.with_overrides({"lora.lora_alpha": 64}).lora.lora_alpha == 64
    with pytest.raises(ConfigError):
        cfg.with_overrides({"lora.alpha": 64})


def test_parse_override_reads_yaml_values():
    assert parse_override("seeds=[1, 2]") == ("seeds", [1, 2])
    assert parse_override("data.system_prompt=Be kind.") == ("data.system_prompt", "Be kind.")


def test_cli_show_and_validate(capsys, tmp_path):
    assert main(["config", "show", str(SMOKE), "lora.r=32"]) == 0
    out = capsys.readouterr().out
    assert "# config hash: " in out and "r: 32" in out
    assert main(["config", "validate", str(SMOKE)]) == 0
    bad = write(tmp_path, "name: x\nsft:\n  learning_rat: 1\n")
    assert main(["config", "validate", str(bad)]) == 2
    assert "did you mean 'sft.learning_rate'" in capsys.readouterr().err


def _leaf_fields(cls, prefix=""):
    """(section class, field name, type, dotted key) of every config field that is not a section."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _leaf_fields(hint, f"{prefix}{f.name}.")
        elif f.name != "root":  # where the config was read from, not a config key
            yield cls, f.name, hint, f"{prefix}{f.name}"


def _numeric_fields(cls):
    import typing

    for section, name, hint, path in _leaf_fields(cls):
        if typing.get_origin(hint) is typing.Literal:  # allowed values, not a number
            continue
        if hint in (int, float) or any(t in str(hint) for t in ("int", "float")):
            yield section, name, path


def test_every_numeric_field_has_a_range():
    """Every int/float field has its range beside it (lists and mappings of numbers too)."""
    from empo.config import ExperimentConfig
    from empo.validate import range_of

    missing = [path for cls, name, path in _numeric_fields(ExperimentConfig)
               if range_of(cls, name) is None]
    assert missing == []


def test_every_field_has_its_help_beside_it():
    """Every config field's help is its metadata["help"] (trl's style), not a docstring line: no
    section docstring (nor that of a class it inherits fields from, cluster's `SlurmOptions`) keeps
    a `field: text` line."""
    import re

    from empo.config import ExperimentConfig
    from empo.validate import field_metadata

    fields = [(section, name, path) for section, name, _, path in _leaf_fields(ExperimentConfig)]
    assert len(fields) > 100 and "cluster.container.runtime" in [p for _, _, p in fields]
    missing = [path for section, name, path in fields
               if not str(field_metadata(section, name, "help") or "").strip()]
    assert missing == []
    in_docstrings = [path for section, name, path in fields for klass in section.__mro__
                     if re.search(rf"^\s*(\w+ / )*{name}( / \w+)*: ", klass.__doc__ or "", re.M)]
    assert in_docstrings == []


def test_eval_options_show_the_fields_help(capsys):
    """`empo eval generate --help` shows each eval.generation field's help from its metadata."""
    import dataclasses

    from empo.config import GenerationConfig

    with pytest.raises(SystemExit) as exit_:
        main(["eval", "generate", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(GenerationConfig):
        assert f"eval.generation.{f.name}: {f.metadata['help']}" in out


def test_allowed_values_beside_the_field_keep_their_messages():
    """model.add_bos, model.attn_implementation, eval.metrics, cluster.executor and
    cluster.container.runtime are checked by the rule beside the field (metadata["allowed"]),
    with the same messages as before."""
    cases = [("model.add_bos=maybe", "model.add_bos: 'maybe' must be auto, true or false"),
             ("model.attn_implementation=fast", "model.attn_implementation: 'fast' must be one "
              "of sdpa, eager"),
             ("eval.metrics=[epitome,bleu]", "eval.metrics: ['epitome', 'bleu'] allowed: "),
             ("cluster.executor=pbs", "cluster.executor: 'pbs' allowed: local, debug, slurm"),
             ("cluster.container.runtime=docker", "cluster.container.runtime: 'docker' allowed: "
              "none, apptainer, pyxis, podman, charliecloud")]
    for override, message in cases:
        with pytest.raises(ConfigError) as err:
            load_config(SMOKE, [override])
        assert f"{SMOKE}: {message}" in str(err.value)
    assert load_config(SMOKE, ["model.add_bos=false"]).model.add_bos is False


def test_a_config_with_a_base_resolves_to_the_long_form(tmp_path):
    """`base:` includes another config (relative to the file); keys override it, lists replace.
    The sweep files are written this way: each equals its long form, same stage fingerprints."""
    from empo.pipeline import build_graph

    table1 = TABLE1
    import shutil

    shutil.copytree(ROOT / "configs" / "cluster", tmp_path / "configs" / "cluster")
    long = tmp_path / "configs" / "long.yaml"
    data = yaml.safe_load(table1.read_text())
    data.update(name="fig", seeds=[1, 2])
    data["lora"]["r"] = 64
    long.write_text(yaml.safe_dump(data))
    short = tmp_path / "configs" / "short.yaml"
    short.write_text(f"base: {table1}\nname: fig\nseeds: [1, 2]\nlora: {{r: 64}}\n")
    a, b = load_config(long), load_config(short)
    assert a.to_dict() == b.to_dict()
    a.root = b.root = ROOT
    assert [s.fingerprint for s in build_graph(a)] == [s.fingerprint for s in build_graph(b)]
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(loop)
