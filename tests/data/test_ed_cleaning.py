"""The message form is cleaned as the raw layout is (`hit:` rows, short dialogues), and a Hub
source is read at its pinned revision (`data.revision`)."""
from __future__ import annotations

import json
from pathlib import Path

from empo.data.chat import eligible
from empo.data.ed import load_dialogues, unescape

# (conv_id, utterance_idx, text, situation): a clean dialogue, a `hit:` turn in the middle, a
# `hit:` situation, a one-turn dialogue, a `hit:` first turn
ROWS = [
    ("a", 1, "I got the job_comma_ finally!", "work"), ("a", 2, "Congratulations!", "work"),
    ("a", 3, "Thanks.", "work"), ("a", 4, "You earned it.", "work"),
    ("b", 1, "My dog ran away.", "dog"), ("b", 2, "sure hit:8_conv:16 thing", "dog"),
    ("b", 3, "He came back.", "dog"),
    ("c", 1, "hello", "glued hit:9_conv:18"), ("c", 2, "hi", "glued hit:9_conv:18"),
    ("d", 1, "Only one turn here.", "alone"),
    ("e", 1, "text hit:3_conv:4", "x"), ("e", 2, "reply", "x"),
]


def write_raw(directory: Path) -> Path:
    directory.mkdir(parents=True)
    lines = ["conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags"]
    lines += [f"{c},{i},sad,{s},1,{t},5|5|5_2|2|5," for c, i, t, s in ROWS]
    (directory / "train.csv").write_text("\n".join(lines) + "\n")
    return directory


def write_message_copy(directory: Path) -> Path:
    """The same rows in message form, uncleaned: what a Hub mirror of the raw files holds."""
    directory.mkdir(parents=True)
    dialogues: dict[str, dict] = {}
    for conv, idx, text, situation in ROWS:
        row = dialogues.setdefault(conv, {"conv_id": conv, "situation": unescape(situation),
                                          "emotion": "sad", "conversations": []})
        row["conversations"].append({"role": "user" if idx % 2 else "assistant",
                                     "content": unescape(text)})
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in dialogues.values()))
    return directory


def test_message_form_drops_what_the_raw_reader_drops(tmp_path):
    raw = load_dialogues(str(write_raw(tmp_path / "raw")), "train")
    hub = load_dialogues(str(write_message_copy(tmp_path / "hub")), "train")
    assert [(d.conv_id, d.turns) for d in raw.dialogues] == [
        ("a", ["I got the job, finally!", "Congratulations!", "Thanks.", "You earned it."]),
        ("b", ["My dog ran away."]), ("d", ["Only one turn here."]), ("e", [])]
    assert hub.dialogues == raw.dialogues
    assert (hub.malformed, hub.dropped_turns, hub.utterances) == \
        (raw.malformed, raw.dropped_turns, raw.utterances) == (4, 2, 6)
    assert [d.conv_id for d in eligible(hub.dialogues)] == ["a"]  # short dialogues go in both


def test_hub_revision_is_passed_to_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, split=None, revision=None, **kwargs):
        calls.append((path, split, revision))
        return datasets.Dataset.from_list([{"conv_id": "a", "situation": "s", "emotion": "sad",
                                            "conversations": [{"role": "user", "content": "hi"}]}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = load_dialogues("org/ed-mirror", "train", revision="0123abc")
    assert calls == [("org/ed-mirror", "train", "0123abc")]
    assert result.dialogues[0].turns == ["hi"]


def test_stages_read_the_configured_revision(monkeypatch, tmp_path):
    """sft, dpo and eval data all go through `load_dialogues` with `data.revision`."""
    from empo.config import load_config
    from empo.evaluate import stages
    from empo.train import dpo, sft

    seen = []

    def fake(source, split, revision=None):
        seen.append((source, split, revision))
        raise RuntimeError("stop")

    monkeypatch.setattr("empo.data.ed.load_dialogues", fake)
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs/experiments/table1.yaml", ["data.revision=v1.0"])
    for call in (lambda: sft.sft_dataset(cfg), lambda: dpo.preference_dataset(cfg, 1),
                 lambda: stages.eval_examples(cfg)):
        try:
            call()
        except RuntimeError:
            pass
    assert [r for _, _, r in seen] == ["v1.0"] * 3


def test_empo_data_messages_writes_a_message_form_copy_that_reads_back_the_same(tmp_path, capsys):
    """`empo data messages` exports the cleaned split in the Hub mirror's layout; the message-form
    reader gives back the same eligible dialogues as the raw reader, and `data stats` names the
    revision it was asked for."""
    from empo.cli import main
    from empo.data.synthetic import write_ed_corpus

    write_ed_corpus(tmp_path / "ed", per_emotion={"train": 2, "valid": 1, "test": 1}, seed=3,
                    malformed=True)
    (tmp_path / "mf").mkdir()
    assert main(["data", "messages", "--source", str(tmp_path / "ed"), "--split", "test",
                 "--out", str(tmp_path / "mf" / "test.jsonl")]) == 0
    raw = eligible(load_dialogues(tmp_path / "ed", "test").dialogues)
    copy = eligible(load_dialogues(tmp_path / "mf", "test").dialogues)
    assert [(d.conv_id, d.emotion, d.situation, d.turns) for d in copy] == \
        [(d.conv_id, d.emotion, d.situation, d.turns) for d in raw]
    capsys.readouterr()
    assert main(["data", "stats", "--source", str(tmp_path / "ed"), "--splits", "test",
                 "--revision", "v1.2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["revision"] == "v1.2"
