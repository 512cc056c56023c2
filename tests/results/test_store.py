"""The run store: atomic writes, markers and the metrics merge other stages rely on."""
from __future__ import annotations

import json
import threading

import pytest

from empo.errors import EmpoError
from empo import store


def test_run_dir_layout(tmp_path):
    assert store.run_dir(tmp_path, "sft_dpo", 3) == tmp_path / "runs" / "sft_dpo" / "seed-3"


def test_markers(tmp_path):
    assert not store.is_done(tmp_path) and not store.is_done(tmp_path, "generate")
    store.mark_done(tmp_path, "generate")
    assert store.is_done(tmp_path, "generate") and not store.is_done(tmp_path)
    store.mark_done(tmp_path)
    assert (tmp_path / "DONE").exists() and (tmp_path / "DONE.generate").exists()


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "rows.jsonl"

    def rows():
        yield {"a": 1}
        raise ValueError("boom")

    with pytest.raises(ValueError):
        store.atomic_write_jsonl(target, rows())
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "x.json"
    store.atomic_write_json(target, {"old": 1})
    with pytest.raises(TypeError):
        store.atomic_write_json(target, {"new": object()})
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_missing_output_directory_is_named(tmp_path):
    with pytest.raises(EmpoError, match="does not exist"):
        store.atomic_write_text(tmp_path / "nope" / "f.txt", "x")


def test_merge_json_keeps_other_keys_under_concurrency(tmp_path):
    path = tmp_path / "metrics.json"
    store.merge_json(path, {"mmlu": 0.5})
    threads = [threading.Thread(target=store.merge_json, args=(path, {f"k{i}": i}))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = json.loads(path.read_text())
    assert merged == {"mmlu": 0.5, **{f"k{i}": i for i in range(8)}}


def test_merge_json_sets_a_corrupt_file_aside(tmp_path):
    """A bad run-store file is moved aside with the reason (never lost) and written afresh; the
    stages whose metrics it held are redone, as their output check finds them missing."""
    path = tmp_path / "metrics.json"
    path.write_text("{not json")
    assert store.merge_json(path, {"a": 1}) == {"a": 1}
    assert (tmp_path / "metrics.json.invalid-1").read_text() == "{not json"
    assert "not valid JSON" in (tmp_path / "metrics.json.invalid-1.why").read_text()


def test_a_problem_is_checked_again_but_a_pass_is_kept(tmp_path, monkeypatch):
    """A file check's pass is cached while the file is unchanged; a problem is not, so a passing
    read error (here: no descriptor could be opened) never makes a finished output look broken
    for the rest of the process."""
    import empo.store as store
    from empo.reader import ReadError

    path = tmp_path / "predictions.jsonl"
    path.write_text('{"prediction": "hi"}\n')
    real = store.open_regular

    def refuse(*args, **kwargs):
        raise ReadError(f"{path}: cannot read (Too many open files)")

    monkeypatch.setattr(store, "open_regular", refuse)
    assert "Too many open files" in store.jsonl_problem(path, "prediction")
    monkeypatch.setattr(store, "open_regular", real)
    assert store.jsonl_problem(path, "prediction") is None  # checked again: passes
    monkeypatch.setattr(store, "open_regular", refuse)
    assert store.jsonl_problem(path, "prediction") is None  # unchanged since it passed: kept
