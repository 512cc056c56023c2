"""The EPITOME classifiers a run was scored with are named by sha256 in the run
(epitome_checkpoints.json), next to the published sums where they are known, so two labs can
compare their files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from empo.evaluate import epitome_layout
from empo.evaluate.epitome_layout import CHECKPOINT_FILES, checkpoint_digests

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "experiments" / "smoke.yaml"


def test_digests_name_each_file_and_compare_with_the_published(tiny_assets, monkeypatch):
    directory = tiny_assets / "epitome"
    expected = {name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
                for name in CHECKPOINT_FILES.values()}
    monkeypatch.setitem(epitome_layout.PUBLISHED_SHA256, "finetuned_IP.pth",
                        expected["finetuned_IP.pth"])
    found = checkpoint_digests(directory)
    assert {name: entry["sha256"] for name, entry in found.items()} == expected
    assert found["finetuned_IP.pth"]["matches_published"] is True
    assert found["finetuned_EX.pth"]["matches_published"] is False   # the tiny file is not it
    assert found["finetuned_ER.pth"]["published_sha256"] is None      # nobody lists ER's
    assert found["finetuned_ER.pth"]["matches_published"] is None


def test_published_sums_are_those_empgpt3_lists():
    """passing2961/EmpGPT-3 modules/empathy_scorer.py RESOURCES (= 508bd49 diff_epitome.py:26-38)."""
    assert epitome_layout.PUBLISHED_SHA256 == {
        "finetuned_EX.pth": "4f43ceb2526e008a2093856208abb878f14236dd54e4fdcdfdd4ccbeb9c08178",
        "finetuned_IP.pth": "e80d1bcfb75f7046961ed71cfd2eada2d939f7f1191e169b0b4aa68e9b6054dc"}


@pytest.mark.slow
def test_the_epitome_stage_records_the_digests_in_the_run(tiny_assets, tmp_path):
    from empo.config import load_config
    from empo.evaluate.stages import epitome_stage

    a = tiny_assets
    cfg = load_config(SMOKE, [
        f"assets={a}", f"results_dir={tmp_path}", f"eval.epitome.checkpoints={a / 'epitome'}",
        f"eval.epitome.encoder={a / 'epitome' / 'encoder'}",
        f"eval.epitome.tokenizer={a / 'epitome' / 'encoder'}"])
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"conv_id": f"c{i}", "emotion": "sad", "seeker": "I lost my job.", "prompt": [],
             "reference": "Oh no, I am sorry.", "prediction": text}
            for i, text in enumerate(["That is awful.", "Why?"])]
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    epitome_stage(cfg, run)
    record = json.loads((run / "epitome_checkpoints.json").read_text())
    assert record["directory"] == str(a / "epitome")
    assert record["files"] == checkpoint_digests(a / "epitome")
