"""Theory-driven preference pairs (the paper's contribution, DESIGN §3 and paper §3, A.3).

For every eligible dialogue d with emotion e: prompt = the turns before d's target, chosen =
target(d), rejected = the target of a dialogue d' drawn from the group labelled opposite(e).
Every epoch holds every eligible dialogue exactly once, with a fresh draw from a generator seeded
by (seed, epoch). `balanced` draws without replacement, cycling freshly shuffled passes over the
group (each candidate used at most ceil(n/m) times per epoch for n requesters and m candidates);
`uniform` draws with replacement. Randomness comes only from the raw 64-bit stream of numpy's
PCG64 bit generator (stable across numpy versions by numpy's policy), seeded with a SHA-256
derived integer (never Python's salted hash()), so the same seed gives a byte-identical file.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from empo.data.columns import Columns, json_escape, ranges, write_values
from empo.data.ed import Dialogue
from empo.data.emotions import EmotionTable
from empo.errors import DataError
from empo.store import atomic_path
from empo.validate import SEED_LIMIT

SAMPLINGS = ("balanced", "uniform")
ROW_FIELDS = ("conv_id", "emotion", "epoch", "prompt", "chosen", "rejected", "rejected_conv_id",
              "rejected_emotion")


def epoch_seed(seed: int, epoch: int) -> int:
    """A stable 64-bit seed for epoch `epoch` of run seed `seed` (no Python hash())."""
    digest = hashlib.sha256(f"empo.preference:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def uniform_floats(bits: Any, n: int) -> Any:
    """`n` floats in [0, 1) from a numpy bit generator's raw 64-bit stream (53 bits each)."""
    import numpy as np

    return (bits.random_raw(n) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


def draw_candidates(n: int, m: int, bits: Any, sampling: str) -> Any:
    """`n` draws from a group of `m` candidates, as a numpy array of indices into the group.

    balanced: consecutive random permutations of the group (random keys, argsorted), cut at n;
    uniform: independent uniform draws.
    """
    import numpy as np

    if sampling == "uniform":
        return np.minimum((uniform_floats(bits, n) * m).astype(np.int64), m - 1)
    passes = -(-n // m)
    keys = uniform_floats(bits, passes * m).reshape(passes, m)
    return np.argsort(keys, axis=1).reshape(-1)[:n]  # 53-bit keys: ties practically never


MAX_EPOCHS = 1000  # as the config's num_train_epochs (its range in config.TrainConfig)


def check_arguments(epochs: int, sampling: str, seed: int = 0) -> None:
    """DataError for an epoch count outside 1..MAX_EPOCHS, a seed outside 0..2^32-1 or an
    unknown sampling scheme."""
    if not isinstance(epochs, int) or not 1 <= epochs <= MAX_EPOCHS:
        raise DataError(f"epochs: {epochs!r} is out of range; allowed: 1 <= epochs <= {MAX_EPOCHS}")
    if not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise DataError(f"seed: {seed!r} is out of range; allowed: 0 <= seed <= {SEED_LIMIT - 1}")
    if sampling not in SAMPLINGS:
        raise DataError(f"sampling: '{sampling}' is not one of {', '.join(SAMPLINGS)}")


def rejected_indices(emotions: Sequence[str] | Any, conv_ids: Sequence[str] | Any,
                     table: EmotionTable, epochs: int, seed: int, sampling: str = "balanced",
                     where: str = "the split") -> list[Any]:
    """Per epoch, a numpy array giving for each dialogue the index of its rejected dialogue.

    The inputs (lists or pyarrow string arrays) describe eligible dialogues only. The table is validated against them first
    (one error listing every label without an opposite and every opposite without dialogues).
    Requesters of a candidate group are served in their input order and groups are drawn in
    sorted label order, so the draws depend on nothing but the inputs and (seed, epoch).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    check_arguments(epochs, sampling)
    if len(emotions) == 0:
        raise DataError(f"{where}: no eligible dialogue (a dialogue needs at least 2 turns)")
    if not isinstance(emotions, pa.Array):
        emotions = pa.array(emotions, type=pa.string())
    encoded = pc.dictionary_encode(emotions)
    labels = encoded.dictionary.to_pylist()  # in order of first appearance
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    counts = dict(zip(labels, np.bincount(codes, minlength=len(labels)).tolist()))
    first = np.full(len(labels), len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))
    examples = {label: str(conv_ids[i]) for label, i in zip(labels, first.tolist())}
    table.validate(counts, where, examples)
    code_of = {label: k for k, label in enumerate(labels)}
    opposite = np.array([code_of[table.opposite(label)] for label in labels], dtype=np.int64)
    asking_code = opposite[codes]
    plan = [(np.flatnonzero(asking_code == k), np.flatnonzero(codes == k))
            for k in sorted(set(opposite.tolist()), key=labels.__getitem__)]
    per_epoch = []
    for epoch in range(epochs):
        bits = np.random.PCG64(epoch_seed(seed, epoch))
        rejected = np.full(len(codes), -1, dtype=np.int64)
        for asking, group in plan:
            rejected[asking] = group[draw_candidates(len(asking), len(group), bits, sampling)]
        per_epoch.append(rejected)
    return per_epoch


def preference_pairs(dialogues: Sequence[Dialogue] | Columns, table: EmotionTable, epochs: int,
                     seed: int, sampling: str = "balanced", system_prompt: str | None = None,
                     where: str = "the split") -> list[dict[str, Any]]:
    """All preference rows of `epochs` epochs (fields ROW_FIELDS; see the module docstring), as
    `write_preference_jsonl` writes them: one implementation of the rows, read back."""
    with tempfile.TemporaryDirectory(prefix="empo-pairs-") as tmp:
        path = Path(tmp) / "pairs.jsonl"
        write_preference_jsonl(path, dialogues, table, epochs, seed, sampling, system_prompt, where)
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]


def write_preference_jsonl(path: Path, data: Columns | Sequence[Dialogue], table: EmotionTable,
                           epochs: int, seed: int, sampling: str = "balanced",
                           system_prompt: str | None = None, where: str = "the split") -> int:
    """Write the rows of `preference_pairs` as JSON lines, atomically; returns the row count.

    Byte-identical to json.dumps(row, ensure_ascii=False) per row, but built column-wise (ED
    scale in ~0.1 s): each dialogue's JSON pieces are made once, and each epoch's lines are
    joined in pyarrow from them and the epoch's draws.
    """
    import pyarrow as pa
    import pyarrow.compute as pc


    cols = (data if isinstance(data, Columns) else Columns.from_dialogues(list(data))).eligible()
    draws = rejected_indices(cols.emotions, cols.conv_ids, table, epochs, seed, sampling, where)
    heads, bodies, tails = _row_pieces(cols, system_prompt)
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as out:
        for epoch, rejected in enumerate(draws):
            lines = pc.binary_join_element_wise(heads, str(epoch), bodies,
                                                pc.take(tails, pa.array(rejected)), "")
            write_values(out, lines)
    return len(cols) * epochs


def _row_pieces(cols: Columns, system_prompt: str | None) -> tuple[Any, Any, Any]:
    """Per dialogue, the JSON text of a row before the epoch number (head), between it and the
    rejected answer (body), and from the rejected answer on when this dialogue is drawn (tail)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc


    join = pc.binary_join_element_wise
    text = json_escape(cols.turns)  # every turn once; prompts and answers take from it
    steps = cols.target_indices()  # = number of prompt turns
    prompt_turns = ranges(cols.starts, steps)
    role = (prompt_turns - np.repeat(cols.starts, steps)) % 2
    openers = pa.array(['{"role": "user", "content": "', '{"role": "assistant", "content": "'])
    turn_json = join(pc.take(openers, pa.array(role)), pc.take(text, pa.array(prompt_turns)),
                     '"}', "")
    offsets = pa.array(np.concatenate(([0], np.cumsum(steps))).astype(np.int32))
    prompts = pc.binary_join(pa.ListArray.from_arrays(offsets, turn_json), ", ")
    system = (f'{{"role": "system", "content": {json.dumps(system_prompt, ensure_ascii=False)}}}, '
              if system_prompt else "")
    answer = pc.take(text, pa.array(cols.starts + steps))
    conv_id, emotion = json_escape(cols.conv_ids), json_escape(cols.emotions)
    heads = join('{"conv_id": "', conv_id, '", "emotion": "', emotion, '", "epoch": ', "")
    bodies = join(', "prompt": [' + system, prompts,
                  '], "chosen": [{"role": "assistant", "content": "', answer,
                  '"}], "rejected": ', "")
    tails = join('[{"role": "assistant", "content": "', answer, '"}], "rejected_conv_id": "',
                 conv_id, '", "rejected_emotion": "', emotion, '"}\n', "")
    return heads, bodies, tails


def length_cutoff(chosen_lengths: Sequence[int], rejected_lengths: Sequence[int],
                  percentile: float) -> int:
    """The DPO length cap of `dpo.length_percentile` (the authors' dpo_ps.py): the larger of the
    `percentile`-th percentiles (numpy's linear interpolation, truncated to an int) of the
    prompt + chosen and the prompt + rejected token counts. Pairs whose prompt + chosen is longer
    are dropped (from every epoch: the chosen side does not change between draws)."""
    import numpy as np

    if not chosen_lengths or not rejected_lengths:
        raise DataError("no preference pairs to measure")
    return max(int(np.percentile(chosen_lengths, percentile)),
               int(np.percentile(rejected_lengths, percentile)))


def even(length: int) -> int:
    """`length` rounded up to an even number, as the authors' dpo_ps.py:66-67 does."""
    return (int(length) + 1) // 2 * 2


def cap_prompt(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int],
               max_length: int, max_prompt_length: int
               ) -> tuple[list[int], list[int], list[int]]:
    """trl 0.8's truncation of one tokenized pair (the authors' trl, `max_prompt_length` with the
    default `keep_end`): where prompt + the longer answer exceeds `max_length`, keep the prompt's
    last `max_prompt_length` tokens; if that is still too long, cut both answers to
    `max_length - max_prompt_length` tokens. Shorter pairs are returned unchanged."""
    longer = max(len(chosen_ids), len(rejected_ids))
    if len(prompt_ids) + longer > max_length:
        prompt_ids = prompt_ids[-max_prompt_length:] if max_prompt_length > 0 else []
    if len(prompt_ids) + longer > max_length:
        keep = max(max_length - max_prompt_length, 0)
        chosen_ids, rejected_ids = chosen_ids[:keep], rejected_ids[:keep]
    return prompt_ids, chosen_ids, rejected_ids
