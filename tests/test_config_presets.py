"""The two Table 1 configs: the code preset (ondrejsotolar/empo@508bd49, the commit that made
Table 1) loads, sources every value to a file and line of that commit, and uses its seed
structure; table1.yaml takes the code's values where the paper is silent and the text where they
disagree; `empo plan` accounts for the 4-bit base; README's reproduction table is the configs'."""
from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from empo.config import load_config
from empo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "experiments" / "table1_code_508bd49.yaml"
TABLE1 = ROOT / "configs" / "experiments" / "table1.yaml"
SHORT_DPO_PROMPT = ("You are a friendly assistant, who provides empathetic responses to the user. "
                    "The input contains previous turn of the dialog, where the each utterance is "
                    "prefaced with tags <|user|>, or <|assistant|>. Be empathetic and precise. Make "
                    "sure to give responses that make dialogue flow. Avoid repeating the prompt.")
GENERATION_PROMPT = SHORT_DPO_PROMPT.replace("where the each", "where each")  # get_gen_sys_msg

FILES_508BD49 = {  # path: lines (git ls-tree -r 508bd49, text files; wc -l + an unterminated last line)
    ".gitignore": 177, "README.md": 37, "requirements.txt": 322, "src/README.md": 1,
    "src/__init__.py": 0, "src/aurasft.sh": 10, "src/base_metrics.py": 162,
    "src/checkpoints/__init__.py": 0, "src/configs/dpo1.json": 33, "src/configs/dpo12.json": 38,
    "src/configs/dpo13.json": 38, "src/configs/dpo14.json": 38, "src/configs/dpo15.json": 38,
    "src/configs/dpo16.json": 38, "src/configs/dpo17.json": 38, "src/configs/dpo2.json": 34,
    "src/configs/dpo3.json": 34, "src/configs/dpo4.json": 34, "src/configs/dpo5.json": 34,
    "src/configs/dpo6.json": 38, "src/configs/dpo7.json": 38, "src/configs/dpo8.json": 38,
    "src/configs/dpo9.json": 38, "src/configs/sft_1.json": 20, "src/configs/sft_10.json": 34,
    "src/configs/sft_11.json": 30, "src/configs/sft_2.json": 24, "src/configs/sft_3.json": 24,
    "src/configs/sft_4.json": 24, "src/configs/sft_5.json": 24, "src/configs/sft_6.json": 26,
    "src/configs/sft_7.json": 26, "src/configs/sft_8.json": 26, "src/configs/sft_9.json": 30,
    "src/configs/t2.json": 33, "src/configs/t3.json": 34, "src/configs/t4.json": 34,
    "src/configs/t5.json": 34, "src/configs/tm1.json": 27, "src/diff_epitome.py": 289,
    "src/dpo_ps.py": 177, "src/dpo_ps_wosft.py": 155, "src/ed_analysis.py": 37,
    "src/ed_load.py": 304, "src/emotions.py": 106, "src/evaluate_from_local.py": 328,
    "src/from_epitome/README.md": 30, "src/from_epitome/__init__.py": 0,
    "src/from_epitome/activations.py": 59, "src/from_epitome/configuration_bert.py": 142,
    "src/from_epitome/configuration_roberta.py": 72,
    "src/from_epitome/configuration_utils.py": 432, "src/from_epitome/file_utils.py": 488,
    "src/from_epitome/modeling_bert.py": 1476, "src/from_epitome/modeling_utils.py": 2098,
    "src/from_epitome/models.py": 263, "src/from_epitome/roberta.py": 685,
    "src/generate_preds.py": 77, "src/generate_preds_blenderbot.py": 58,
    "src/generate_preds_zephyr_dpo.py": 101, "src/genpreds_zephyr.py": 75, "src/joan_utils.py": 24,
    "src/kto.py": 152, "src/kto_test.py": 39, "src/lmehcommands.txt": 50, "src/mmlu.py": 150,
    "src/mmlu1.sh": 27, "src/mmlu_all.py": 252, "src/mmlu_aura1.sh": 42, "src/mmlu_aura2.sh": 23,
    "src/mmlu_aura3.sh": 10, "src/mmlu_aura4.sh": 23, "src/pipe_arun.py": 30,
    "src/pipe_sft.py": 223, "src/pipe_test.py": 250, "src/requirements.txt": 2,
    "src/run_metrics.py": 45, "src/run_metrics_on_batch.py": 85,
    "src/run_metrics_on_saved_df.py": 94, "src/run_mmlu_llama.py": 223,
    "src/sft_inference.py": 146, "src/sft_minimal_example.py": 188, "src/test.py": 40,
    "src/test_sft_zephyr_ed_w_notes.py": 223, "src/test_sft_zephyr_hftut.py": 29,
}

CITATION = re.compile(r"(?<![\w/])([\w/]+\.(?:py|json|txt|md|sh)):(\d+)(?:-(\d+))?((?:, \d+(?:-\d+)?)*)")


def cited_file(name: str) -> str | None:
    """The 508bd49 path a citation names (the preset omits src/ and src/configs/)."""
    for path in (name, f"src/{name}", f"src/configs/{name}"):
        if path in FILES_508BD49:
            return path
    return None


def key_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of every `key: value` line of a config, section headers excluded."""
    return [(n, line) for n, line in enumerate(path.read_text().splitlines(), start=1)
            if re.match(r"^\s*[a-z_]+: \S", line) and not line.lstrip().startswith("#")
            and not re.match(r"^\s*[a-z_]+:\s+#", line)]


def test_preset_loads_with_the_values_of_508bd49():
    cfg = load_config(PRESET)
    assert cfg.name == "table1_code_508bd49"
    assert (cfg.model.quantization, cfg.model.add_bos) == ("nf4", "auto")
    assert (cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.lora_dropout) == (1024, 256, 0.1)
    assert cfg.lora.modules_to_save == ["embed_tokens", "lm_head"]
    assert (cfg.sft.max_length, cfg.sft.max_grad_norm, cfg.sft.warmup_ratio) == (256, 0.3, 0.0)
    assert (cfg.dpo.warmup_ratio, cfg.dpo.max_grad_norm, cfg.dpo.length_percentile) == (0.1, 0.3, 95)
    assert cfg.eval.generation.max_new_tokens == 200 and not cfg.eval.drop_empty_predictions
    assert cfg.system_prompt("sft") is None
    assert cfg.system_prompt("dpo") == SHORT_DPO_PROMPT  # 508bd49: no "long and elaborate"
    assert cfg.system_prompt("eval") == GENERATION_PROMPT
    assert cfg.dpo.sft_seed == 1
    assert [cfg.dpo.beta_of(s) for s in cfg.seeds] == [0.025, 0.025, 0.0249, 0.0251]


def test_every_preset_value_names_its_source():
    """Each key: value line carries a comment: a file:line of 508bd49, the text, or ours."""
    for number, line in key_lines(PRESET):
        if line.strip().startswith(("name:", "results_dir:", "profile:")):
            continue
        unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', line, count=1)  # a prompt may hold '#'
        comment = unquoted.partition("#")[2]
        assert CITATION.search(comment) or re.search(r"\b(ours|text)\b", comment), \
            f"{PRESET.name}:{number} names no source: {line.strip()}"


def test_every_citation_is_a_line_of_a_file_of_508bd49():
    """The cited files exist at 508bd49 and the cited lines are within them; bare ':N' after a
    citation refers to the same file."""
    cited = 0
    for number, line in enumerate(PRESET.read_text().splitlines(), start=1):
        if "#" not in line:
            continue
        for match in CITATION.finditer(line):
            path = cited_file(match[1])
            assert path, f"{PRESET.name}:{number}: {match[1]} is not a file of 508bd49"
            numbers = [int(match[2]), int(match[3] or match[2])]
            numbers += [int(n) for n in re.findall(r"\d+", match[4] or "")]
            for n in numbers:
                assert 1 <= n <= FILES_508BD49[path], \
                    f"{PRESET.name}:{number}: {path} has {FILES_508BD49[path]} lines, cited {n}"
            cited += 1
    assert cited > 60


def test_the_preset_cites_no_later_code():
    """Nothing from justtherightsize/empo (dpo20.json, average_diff.py, the long DPO prompt)."""
    text = PRESET.read_text()
    assert "dpo20.json" not in text.replace("(Before", "") and "average_diff" not in text
    assert "long and elaborate" not in text and "e80b4b4" in text  # named only as the later copy


def test_table1_follows_the_code_where_the_text_is_silent():
    cfg = load_config(TABLE1)
    assert cfg.system_prompt("eval") == GENERATION_PROMPT  # every row, the baseline too
    assert cfg.system_prompt("dpo") == SHORT_DPO_PROMPT and cfg.system_prompt("sft") is None
    assert cfg.eval.generation.max_new_tokens == 200
    assert (cfg.lora.lora_dropout, cfg.lora.modules_to_save) == (0.1, ["embed_tokens", "lm_head"])
    assert (cfg.sft.max_grad_norm, cfg.dpo.max_grad_norm, cfg.sft.max_length) == (0.3, 0.3, 256)
    assert cfg.dpo.length_percentile == 95


def test_table1_keeps_the_text_where_text_and_code_disagree():
    cfg = load_config(TABLE1)
    assert (cfg.model.quantization, cfg.model.dtype) == ("none", "bfloat16")  # A.1: bf16
    assert (cfg.sft.warmup_ratio, cfg.dpo.warmup_ratio) == (0.0, 0.0)       # A.1: no warmup
    assert (cfg.sft.optim, cfg.dpo.optim) == ("adamw_torch", "adamw_torch")  # A.1: AdamW
    assert (cfg.dpo.sft_seed, cfg.dpo.betas, cfg.dpo.beta) == (None, {}, 0.025)  # independent chains


def test_readme_reproduction_table_is_made_from_the_configs():
    script = runpy.run_path(str(ROOT / "scripts" / "reproduction-table"))
    table = script["readme_table"]((ROOT / "README.md").read_text())
    assert table is not None, "README.md has no reproduction-table markers"
    assert table == script["render"](), "run scripts/reproduction-table --write"


@pytest.mark.parametrize("override, match", [("model.add_bos=maybe", "model.add_bos"),
                                             ("model.quantization=int8", "model.quantization"),
                                             ("dpo.length_percentile=0", "length_percentile"),
                                             ("dpo.sft_seed=7", "dpo.sft_seed"),
                                             ("dpo.betas={x: 0.1}", "dpo.betas"),
                                             ("dpo.betas={2: -1}", "dpo.betas.2")])
def test_bad_values_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(PRESET, [override])


def test_plan_accounts_for_the_nf4_base_and_the_saved_modules():
    from empo.train.memory import plan_memory

    quantized = plan_memory(load_config(PRESET), "sft")
    full = plan_memory(load_config(PRESET, ["model.quantization=none", "lora.modules_to_save=[]"]),
                       "sft")
    assert quantized.memory["base weights (nf4)"] < full.memory["base weights"] / 3
    vocab_by_hidden = 32000 * 4096
    assert quantized.lora_params - full.lora_params == 2 * vocab_by_hidden


def test_nf4_is_refused_with_a_clear_message_without_bitsandbytes_or_cuda():
    import importlib.util

    import torch

    from empo.models import quantization_config

    if importlib.util.find_spec("bitsandbytes") and torch.cuda.is_available():
        pytest.skip("bitsandbytes and CUDA are here: nf4 loads")
    with pytest.raises(ConfigError, match="model.quantization: nf4 needs"):
        quantization_config("nf4", "bfloat16")


def dpo_stages(path: Path, tmp_path: Path, *overrides: str):
    from empo.pipeline import build_graph

    graph = build_graph(load_config(path, [f"results_dir={tmp_path}", *overrides]))
    return {stage.seed: stage for stage in graph if stage.kind == "dpo"}


def test_preset_dpo_runs_all_continue_sft_seed_1_with_their_own_beta(tmp_path):
    stages = dpo_stages(PRESET, tmp_path)
    assert {s: stage.deps for s, stage in stages.items()} == {
        s: ("sft/sft/seed-1",) for s in (1, 2, 3, 4)}
    assert all(stage.adapter == tmp_path / "table1_code_508bd49" / "runs" / "sft" / "seed-1" /
               "adapter" for stage in stages.values())
    assert [stages[s].config.dpo.beta for s in (1, 2, 3, 4)] == [0.025, 0.025, 0.0249, 0.0251]


def test_independent_chains_stay_the_default(tmp_path):
    stages = dpo_stages(TABLE1, tmp_path)
    assert {s: stage.deps for s, stage in stages.items()} == {
        s: (f"sft/sft/seed-{s}",) for s in (1, 2, 3, 4)}
    assert {stage.config.dpo.beta for stage in stages.values()} == {0.025}


def test_the_seed_structure_fields_enter_no_fingerprint_but_their_effect_does(tmp_path):
    """Existing configs keep their DPO fingerprints (the new fields are not identity fields);
    a shared SFT seed changes the DPO runs that now read another SFT run, a per-seed beta the
    run it names."""
    base = dpo_stages(TABLE1, tmp_path)
    assert not any(key.startswith(("dpo.sft_seed", "dpo.betas"))
                   for stage in base.values() for key in stage.fields)
    shared = dpo_stages(TABLE1, tmp_path, "dpo.sft_seed=1")
    assert [s for s in base if shared[s].fingerprint != base[s].fingerprint] == [2, 3, 4]
    jittered = dpo_stages(TABLE1, tmp_path, "dpo.betas={3: 0.0249}")
    assert [s for s in base if jittered[s].fingerprint != base[s].fingerprint] == [3]


@pytest.mark.parametrize("name, dependency, structure", [
    ("table1.yaml", "aftercorr:<sft/sft>", "independent chains"),
    ("table1_code_508bd49.yaml", "afterok:<sft/sft>_0",
     "every DPO run continues the SFT adapter of seed 1; beta per seed 1: 0.025, 2: 0.025, "
     "3: 0.0249, 4: 0.0251")])
def test_dry_run_and_plan_show_the_seed_structure(name, dependency, structure, tmp_path, capsys,
                                                   monkeypatch, tiny_assets):
    """The dry run's DPO array waits on SFT task by task (its own seed) or on SFT seed 1's task
    alone; `empo plan --stage dpo` says which."""
    from empo.cli import main

    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "no-cluster.conf"))
    config = str(ROOT / "configs" / "experiments" / name)
    assert main(["submit", "--dry-run", config, f"results_dir={tmp_path}", "--no-preflight"]) == 0
    dpo_line = next(line for line in capsys.readouterr().out.splitlines() if "dpo/sft_dpo" in line)
    assert dependency in dpo_line
    assert main(["plan", config, "--stage", "dpo", f"data.source={tiny_assets / 'ed'}"]) == 0
    assert f"seed structure: {structure}" in capsys.readouterr().out


def test_train_dpo_of_any_seed_reads_the_shared_sft_seed(tmp_path, capsys):
    """`empo train dpo --seed 3` on the preset wants SFT seed 1's adapter, and says so."""
    from empo.cli import main

    assert main(["train", "dpo", str(PRESET), "--seed", "3", f"results_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "runs/sft/seed-1/adapter is missing" in err and "--seed 1` first" in err
