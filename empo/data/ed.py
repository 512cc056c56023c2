"""EmpatheticDialogues loading: raw CSV layout (tolerant parser) or the Hub mirror's message form.

Raw layout (DESIGN §3): `<split>.csv` with the header
`conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags`. It is *not* a quoted
CSV: lines are split on commas, and commas inside text are written `_comma_`. Rows with the wrong
number of fields, or whose text contains another row's id (`hit:`), are dropped and counted. Rows
are grouped by `conv_id` (in order of first appearance) and ordered by `utterance_idx`; the label
is `context`, the situation is `prompt`, turn 0 is the speaker ("user") and turns alternate.
The parser itself is `empo.data.raw` (vectorised); the types are in `empo.data.dialogue` and
`empo.data.columns`; this module holds the sources.

Message form (e.g. `Estwld/empathetic_dialogues_llm`): columns conv_id, situation, emotion,
conversations[{role, content}], read through `datasets` from the Hub (at a pinned `revision` when
given) or from a local .jsonl/.json/.parquet file or directory of such files. The raw reader's
cleaning applies here too: a dialogue whose situation or emotion contains `hit:` is dropped (in
the raw layout every one of its rows would be), and a turn that contains it is dropped and ends
the dialogue there (in the raw layout it leaves a gap in utterance_idx).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from empo.data.columns import LoadResult
from empo.data.dialogue import Dialogue
from empo.data.raw import read_raw_csv
from empo.errors import DataError
from empo.validate import home_path

MESSAGE_COLUMNS = ("conv_id", "situation", "emotion", "conversations")
MESSAGE_SUFFIXES = (".jsonl", ".json", ".parquet")
SPLITS = ("train", "valid", "test")
HIT = "hit:"  # in a text field: the row swallowed another row's id (a known ED defect)
_SPLIT_ALIASES = {"valid": ("valid", "validation"), "validation": ("validation", "valid")}


def unescape(text: str) -> str:
    """ED's escaped commas back to commas."""
    return text.replace("_comma_", ",")


def split_names(split: str) -> tuple[str, ...]:
    """`valid` and `validation` name the same split (raw ED vs. some Hub mirrors)."""
    return _SPLIT_ALIASES.get(split, (split,))


def load_dialogues(source: str | Path, split: str, revision: str | None = None) -> LoadResult:
    """The dialogues of `split` from a raw CSV directory, a message-form file/dir, or a Hub id
    (at `revision`, `data.revision`; ignored for local sources)."""
    kind, where = resolve_source(source, split)
    if kind == "raw":

        return read_raw_csv(Path(where), source=str(source), split=split)
    return read_message_form(kind, where, source=str(source), split=split, revision=revision)


def resolve_source(source: str | Path, split: str) -> tuple[str, str]:
    """("raw" | "file" | "hub", location) for `split` of `source`; DataError if it has none.

    A directory holds `<split>.csv` (raw layout) or `<split>.{jsonl,json,parquet}` /
    `data/<split>-*.parquet` (message form). A single file is that split's data whatever split is
    asked. Anything else that looks like a path must exist; otherwise it is taken as a Hub id.
    """
    text = str(source)
    path = home_path(text)
    if path.is_dir():
        for name in split_names(split):
            if (path / f"{name}.csv").is_file():
                return "raw", str(path / f"{name}.csv")
            for suffix in MESSAGE_SUFFIXES:
                if (path / f"{name}{suffix}").is_file():
                    return "file", str(path / f"{name}{suffix}")
            shards = sorted(path.glob(f"{name}-*.parquet")) or sorted(
                path.glob(f"data/{name}-*.parquet"))
            if shards:
                return "file", str(shards[0].parent / f"{name}-*.parquet")
        found = sorted(p.name for p in path.iterdir()
                       if p.suffix in (".csv", *MESSAGE_SUFFIXES)) or ["nothing usable"]
        raise DataError(f"{path}: missing split file {split}.csv (or {split}.jsonl/.json/.parquet)"
                        f" for split '{split}'; found: {', '.join(found)}")
    if path.is_file():
        if path.suffix == ".csv":
            return "raw", str(path)
        if path.suffix in MESSAGE_SUFFIXES:
            return "file", str(path)
        raise DataError(f"{path}: unsupported source file type '{path.suffix}' "
                        f"(expected .csv, {', '.join(MESSAGE_SUFFIXES)})")
    if _looks_like_path(text):
        raise DataError(f"source {text}: no such file or directory")
    return "hub", text


def _looks_like_path(text: str) -> bool:
    return (text.startswith(("/", ".", "~")) or text.count("/") > 1
            or text.endswith((".csv", *MESSAGE_SUFFIXES)))


def read_message_form(kind: str, where: str, source: str, split: str,
                      revision: str | None = None) -> LoadResult:
    """Load the message form (Hub id or local file) through `datasets` and convert each row,
    cleaned as the raw reader cleans (module docstring)."""
    table = _load_dataset(kind, where, split, revision)
    missing = [c for c in MESSAGE_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{where}: split '{split}' lacks column(s) {', '.join(missing)} "
                        f"(message form needs {', '.join(MESSAGE_COLUMNS)}; "
                        f"found {', '.join(table.column_names)})")
    columns = table.to_dict()
    result = LoadResult(source=source, split=split, path=where, _dialogues=[])
    for conv_id, situation, emotion, conversation in zip(
            *(columns[c] for c in MESSAGE_COLUMNS)):
        turns = _message_turns(conversation)
        if turns is None or conv_id is None or emotion is None:
            result.malformed += 1
            continue
        if HIT in str(situation or "") or HIT in str(emotion):
            result.malformed += len(turns)
            continue
        hits = [i for i, (_, content) in enumerate(turns) if HIT in content]
        kept = min([_alternating_prefix(turns), *hits[:1]])
        result.malformed += len(hits)
        result.dropped_turns += len(turns) - kept - len(hits)
        result.dialogues.append(Dialogue(str(conv_id), str(emotion).strip(),
                                         unescape(situation or ""),
                                         [unescape(content) for _, content in turns[:kept]]))
        result.utterances += kept
    return result


def _load_dataset(kind: str, where: str, split: str, revision: str | None = None) -> Any:
    import datasets  # lazy: only the message form needs it

    if kind == "file":
        builder = "parquet" if where.endswith(".parquet") else "json"
        try:
            return datasets.load_dataset(builder, data_files=where, split="train")
        except Exception as err:  # noqa: BLE001 - any reader failure is a data problem
            raise DataError(f"{where}: cannot read as {builder} "
                            f"({type(err).__name__}: {err})") from None
    first: Exception | None = None
    for name in split_names(split):
        try:
            return datasets.load_dataset(where, split=name, revision=revision)
        except Exception as err:  # noqa: BLE001 - offline, unknown id, unknown split
            first = first or err
    raise DataError(f"cannot load Hub dataset '{where}' split '{split}' "
                    f"({type(first).__name__}: {first})")


def _message_turns(conversation: Any) -> list[tuple[str, str]] | None:
    """(role, content) pairs without system messages; None if the row is unusable."""
    if not isinstance(conversation, list):
        return None
    turns = []
    for message in conversation:
        if not isinstance(message, dict):
            return None
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            return None
        if role != "system":
            turns.append((role, content))
    return turns


def _alternating_prefix(turns: list[tuple[str, str]]) -> int:
    """How many leading turns follow user, assistant, user, ..."""
    for i, (role, _) in enumerate(turns):
        if role != ("user" if i % 2 == 0 else "assistant"):
            return i
    return len(turns)
