"""`empo epitome train`: the EPITOME classifiers trained from the Reddit annotations with the
original recipe load strictly into the scorer; rationale spans become token labels; the split is
deterministic and pair-disjoint; bad input is refused before anything is written."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from empo.cli import main
from empo.errors import DataError
from empo.evaluate.epitome import CHECKPOINT_FILES, encode, load_scorer
from empo.evaluate.epitome_data import (COLUMNS, FILES, SPLITS, Annotation, find_span,
                                        load_annotations, read_annotations, split_annotations)
from empo.evaluate.epitome_train import classification_metrics, token_labels

SEEKER = "I lost my job today and I feel so lonely, my friend came home but I am still sad."
# (response, level, rationales): several spans, one span, none, one with escaped text
ROWS = [
    ("I am so sorry to hear that. How do you feel now? Did your sister know?", 2,
     "I am so sorry to hear that.|Did your sister know?|"),
    ("That sounds hard, I hope things get better soon.", 1, "I hope things get better soon|"),
    ("What happened at the exam yesterday?", 0, ""),
    ("Wow, great news &amp; thank you for telling me &lt;3", 2, "great news & thank you|"),
]


def _write(path: Path, rows: list[dict], columns=COLUMNS) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _rows(copies: int = 6) -> list[dict]:
    return [{"sp_id": f"s{i}", "rp_id": f"r{i}-{j}", "seeker_post": SEEKER, "response_post": resp,
             "level": level, "rationales": rationales}
            for i in range(copies) for j, (resp, level, rationales) in enumerate(ROWS)]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a loaded 2-core machine two threads make tiny models far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def annotations(tmp_path: Path) -> Path:
    """The three mechanisms' CSVs, 24 rows each, written by the test."""
    where = tmp_path / "epitome-reddit"
    where.mkdir()
    for name in FILES.values():
        _write(where / name, _rows())
    return where


@pytest.fixture(scope="module")
def encoder(tiny_assets: Path) -> Path:
    """A tiny pretrained RoBERTa (weights + tokenizer)."""
    return tiny_assets / "bertscore"


@pytest.fixture(scope="module")
def tokenizer(encoder):
    return AutoTokenizer.from_pretrained(encoder)


def _labelled_text(tokenizer, row: Annotation, max_length: int = 64) -> list[str]:
    """The texts of the runs of tokens labelled 1, in order."""
    ids, labels = token_labels(tokenizer, row, max_length)
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current).strip())
            current = []
    return runs + ([tokenizer.decode(current).strip()] if current else [])


# ----------------------------------------------------------------------------- training


def test_training_writes_checkpoints_that_the_scorer_loads_strictly(annotations, encoder, tmp_path,
                                                                    capsys):
    out = tmp_path / "classifiers"
    assert main(["epitome", "train", "--data", str(annotations), "--encoder", str(encoder),
                 "--out", str(out), "--max-steps", "3", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*CHECKPOINT_FILES.values(),
                                                            "report.json"])
    report = json.loads((out / "report.json").read_text())
    for aspect in ("ER", "EX", "IP"):
        dim = report["dimensions"][aspect]
        assert dim["steps"] == 3
        assert set(dim["test"]) == {"n", "accuracy", "macro_f1", "confusion"}
        assert sum(map(sum, dim["test"]["confusion"])) == dim["test"]["n"] == dim["rows"]["test"]
        assert "paper" not in dim  # no reported number that could not be traced
    assert "arXiv:2009.08441" in report["paper_source"]
    assert report["recipe"]["learning_rate"] == 2e-5 and report["recipe"]["batch_size"] == 32
    scorer = load_scorer(out, str(encoder))  # strict: every key of the published layout
    assert scorer.seeker_encoders == 1  # the frozen seeker encoder is identical in all three
    levels = scorer.score([SEEKER], ["So sorry, how do you feel?"], ["What happened?"])
    assert {len(v) for v in levels.pred.values()} == {1}
    assert "ER: test accuracy" in capsys.readouterr().out


def test_the_seeker_encoder_stays_frozen_and_the_responder_trains(annotations, encoder, tmp_path):
    from transformers import RobertaModel

    out = tmp_path / "classifiers"
    assert main(["epitome", "train", "--data", str(annotations), "--encoder", str(encoder),
                 "--out", str(out), "--max-steps", "2", "--device", "cpu"]) == 0
    state = torch.load(out / "finetuned_ER.pth", weights_only=True)
    pretrained = RobertaModel.from_pretrained(encoder).state_dict()
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(state[f"seeker_encoder.roberta.{key}"], pretrained[key])
    assert not torch.equal(state[f"responder_encoder.roberta.{key}"], pretrained[key])


@pytest.mark.slow  # tier: trains and evaluates on every real annotation (27 s on the loaded box)
def test_training_on_the_real_annotations_gives_scorable_checkpoints(shared_dir, encoder,
                                                                      tmp_path):
    out = tmp_path / "classifiers"
    assert main(["epitome", "train", "--data", str(shared_dir / "data" / "epitome-reddit"),
                 "--encoder", str(encoder), "--out", str(out), "--epochs", "1",
                 "--max-steps", "2", "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {d["rows"]["test"] for d in report["dimensions"].values()} == {619}
    keys = [line.split("\t")[0] for line in
            (shared_dir / "epitome" / "state_dict_keys.tsv").read_text().splitlines()]
    state = torch.load(out / "finetuned_IP.pth", weights_only=True)
    # the published layout of roberta-base, cut to the tiny encoder's 2 layers
    assert set(state) == {k for k in keys if not re.search(r"\.layer\.([2-9]|1[01])\.", k)}
    load_scorer(out, str(encoder)).pair_levels([SEEKER], ["I hope it gets better."])


# ----------------------------------------------------------------------------- token labels


def test_rationale_spans_become_token_labels(annotations, tokenizer):
    rows = read_annotations(annotations / FILES["ER"])
    several, one, none, escaped = rows[:4]
    assert _labelled_text(tokenizer, several) == ["i am so sorry to hear that.",
                                                  "did your sister know?"]
    assert _labelled_text(tokenizer, one) == ["i hope things get better soon"]
    assert _labelled_text(tokenizer, escaped) == ["great news &amp; thank you"]
    ids, labels = token_labels(tokenizer, none)  # none: every token but <s> (src/process_data.py)
    assert labels == [0] + [1] * (len(ids) - 1)
    assert ids == encode(tokenizer, [none.response])[0]  # the scorer's tokenisation


def test_labels_stop_at_the_64_token_truncation(tokenizer):
    response = " ".join(["how do you feel"] * 40) + " i understand"
    row = Annotation("s", "r", SEEKER, response, 2, (find_span(response, "i understand"),), 1)
    ids, labels = token_labels(tokenizer, row)
    assert len(ids) == 64 and sum(labels) == 0


def test_hand_checked_rows_of_the_real_annotations(shared_dir, tokenizer):
    data = load_annotations(shared_dir / "data" / "epitome-reddit")
    ex = {(r.sp_id, r.rp_id): r for r in data["EX"]}
    er = {(r.sp_id, r.rp_id): r for r in data["ER"]}
    # the tiny tokenizer's pieces are short: no truncation here (64 of roberta-base's tokens)
    assert _labelled_text(tokenizer, ex["65m92s", "dgbdk7z"], 512) == [
        "do you not know what you're doing in regards to a specific section of your life? "
        "like school or work?"]
    several = ex["60bfpl", "df4zctv"]  # three adjacent rationales: one run of labelled tokens
    spans = ["what were you taking before vs what are you taking now?",
             "are you being prescribed by your general doctor or a psychiatrist?",
             "do you feel like you are in danger right now?"]
    assert [several.response.lower()[a:b] for a, b in several.spans] == spans
    assert _labelled_text(tokenizer, several, 512) == [" ".join(spans)]
    row = er["65m92s", "dgbdk7z"]  # level 0, no rationale
    assert row.level == 0 and row.spans == ()
    ids, labels = token_labels(tokenizer, row)
    assert labels == [0] + [1] * (len(ids) - 1)


def test_rationales_are_found_across_whitespace_escaping_and_removed_words():
    response = "Most of us on this subreddit have been there.  Keep going &lt;3"
    assert response[slice(*find_span(response, "Most of us on this have been"))] == \
        "Most of us on this subreddit have been"
    assert response[slice(*find_span(response, "Keep   going <3"))] == "Keep going &lt;3"
    assert find_span("&gt;no matter how bad", ";no matter how") == (3, 17)  # cut inside &gt;
    assert find_span(response, "never said") is None


# ----------------------------------------------------------------------------- split


def test_the_split_is_deterministic_per_seed_and_pairs_never_cross_splits(annotations):
    data = load_annotations(annotations)
    first, again, other = (split_annotations(data, s) for s in (12, 12, 13))
    assert first == again and first != other
    for aspect, splits in first.items():
        owner = {}
        for split in SPLITS:
            for row in splits[split]:
                assert owner.setdefault(row.pair, split) == split
        assert sum(len(v) for v in splits.values()) == len(data[aspect])
    assert [r.pair for r in first["ER"]["test"]] == [r.pair for r in first["IP"]["test"]]


def test_metrics_are_accuracy_macro_f1_and_the_confusion_matrix():
    metrics = classification_metrics([0, 0, 1, 2], [0, 1, 1, 2])
    assert metrics["accuracy"] == 0.75
    assert metrics["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


# ----------------------------------------------------------------------------- bad input


def _break(where: Path, how: str) -> str:
    path = where / FILES["EX"]
    rows = _rows()
    if how == "missing column":
        _write(path, rows, [c for c in COLUMNS if c != "level"])
        return f"{path}: missing column(s) level"
    if how == "unknown level":
        rows[5]["level"] = "3"
        _write(path, rows)
        return f"{path} row 6 (line 7): unknown level '3'"
    if how == "empty file":
        path.write_text("")
        return f"{path}: empty file"
    rows[9]["rationales"] = "not in the response at all|"
    _write(path, rows)
    return f"{path} row 10 (line 11): rationale 'not in the response at all' not found"


@pytest.mark.parametrize("how", ["missing column", "unknown level", "empty file",
                                 "rationale not found"])
def test_bad_input_exits_2_naming_file_and_row_and_writes_nothing(annotations, encoder, tmp_path,
                                                                   capsys, how):
    expected = _break(annotations, how)
    out = tmp_path / "classifiers"
    assert main(["epitome", "train", "--data", str(annotations), "--encoder", str(encoder),
                 "--out", str(out), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["epitome-reddit"]
    with pytest.raises(DataError):
        load_annotations(annotations)


def test_an_out_directory_holding_files_is_never_touched(annotations, encoder, tmp_path, capsys):
    out = tmp_path / "classifiers"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["epitome", "train", "--data", str(annotations), "--encoder", str(encoder),
                 "--out", str(out), "--max-steps", "1"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifiers", "epitome-reddit"]


# ----------------------------------------------------------------------------- pipeline


def _smoke(project_root: Path, tmp_path: Path, *overrides: str):
    from empo.config import load_config

    return load_config(project_root / "configs" / "experiments" / "smoke.yaml",
                       [f"results_dir={tmp_path / 'results'}", "eval.epitome.checkpoints=train",
                        *overrides])


def test_checkpoints_train_adds_one_gpu_job_every_epitome_eval_waits_for(annotations, tmp_path,
                                                                          project_root):
    from empo.launch.jobs import plan_units
    from empo.launch.resources import job_resources
    from empo.pipeline import build_graph

    data = f"eval.epitome.train_data={annotations}"
    cfg = _smoke(project_root, tmp_path, data, "cluster.gpus_per_node=4")
    graph = build_graph(cfg)
    train = graph.stages["epitome_train"]
    assert list(graph.stages)[0] == "epitome_train"
    assert train.directory.parent == cfg.experiment_dir / "epitome_train"
    epitome = [s for s in graph if s.kind == "epitome"]
    assert len(epitome) == 5  # baseline seed 1 (seed 2 shares it), sft and sft_dpo x 2 seeds
    assert all("epitome_train" in s.deps and s.source == train.directory / "checkpoints"
               for s in epitome)
    units = {u.key: u for u in plan_units(graph)}
    assert units["epitome_train"].deps == ()
    assert all("epitome_train" in u.deps for u in units.values()
               if any(s.kind == "epitome" for s in u.stages))
    assert job_resources(cfg, "epitome_train", "t").gpus_per_node == 1
    # its fingerprint: the same for other seeds, another for another training seed
    same = build_graph(_smoke(project_root, tmp_path, data, "seeds=[7]"))
    assert same.stages["epitome_train"].directory == train.directory
    other = build_graph(_smoke(project_root, tmp_path, data, "eval.epitome.train_seed=13"))
    assert other.stages["epitome_train"].directory != train.directory


def test_checkpoints_train_needs_the_annotation_directory(project_root, tmp_path):
    from empo.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.epitome.train_data"):
        _smoke(project_root, tmp_path)


def test_the_training_stage_runs_once_and_the_scorer_reads_its_checkpoints(
        annotations, tmp_path, project_root, tiny_assets):
    from empo.pipeline import StageCall, build_graph

    cfg = _smoke(project_root, tmp_path, f"eval.epitome.train_data={annotations}",
                 f"eval.epitome.encoder={tiny_assets / 'bertscore'}",
                 f"eval.epitome.tokenizer={tiny_assets / 'bertscore'}")
    train = build_graph(cfg).stages["epitome_train"]
    assert StageCall([train])() == {"epitome_train": "done"}
    assert train.is_done()
    stage = json.loads((train.directory / "stage.json").read_text())
    assert stage["kind"] == "epitome_train" and stage["fingerprint"].startswith(
        train.directory.name)
    load_scorer(train.directory / "checkpoints", str(tiny_assets / "bertscore"))
    assert StageCall([train])() == {"epitome_train": "skipped (done)"}
