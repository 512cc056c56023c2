"""The key list of an EPITOME checkpoint, read without torch and without loading any tensor.

A restricted unpickler walks the state dict's pickle (torch's zip format or the legacy one) and
turns every tensor into its shape; no class outside this module is ever instantiated, so reading
is safe on untrusted files and takes milliseconds for the 500 MB published checkpoints. Keys are
compared with the published layout (`empo:epitome/state_dict_keys.tsv`, roberta-base) with layer
numbers folded, so an encoder of another depth (the tiny test one) has the same layout.
"""
from __future__ import annotations

import collections
import hashlib
import pickle
import re
import zipfile
from pathlib import Path

from empo.config import package_file
from empo.errors import EvalError

CHECKPOINT_FILES = {aspect: f"finetuned_{aspect}.pth" for aspect in ("ER", "EX", "IP")}
IGNORED_SUFFIXES = ("embeddings.position_ids",)  # buffers some transformers versions saved
_LAYER = re.compile(r"\.layer\.\d+\.")


class _Tensor(tuple):
    """A tensor's shape, standing in for the tensor."""


class _Stub:
    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _rebuild_tensor(storage, offset, size, *rest):
    return _Tensor(int(n) for n in size)


def _rebuild_parameter(data, *rest):
    return data


class _KeyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if name.startswith("_rebuild_tensor"):
            return _rebuild_tensor
        if name.startswith("_rebuild_parameter"):
            return _rebuild_parameter
        return _Stub  # storages, dtypes, anything else: inert

    def persistent_load(self, pid):
        return None


def state_dict_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """key -> shape of the state dict in `path`; EvalError if it is not one."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("/data.pkl")
                             or n == "data.pkl"), None)
                if name is None:
                    raise EvalError(f"{path}: a zip file without data.pkl, not a torch checkpoint")
                with archive.open(name) as handle:
                    state = _KeyUnpickler(handle).load()
        else:
            with open(path, "rb") as handle:  # legacy: magic, protocol, sys info, then the object
                for _ in range(3):
                    _KeyUnpickler(handle).load()
                state = _KeyUnpickler(handle).load()
    except EvalError:
        raise
    except Exception as err:  # noqa: BLE001 - any malformed pickle is the same problem
        raise EvalError(f"{path}: cannot read as a torch state dict "
                        f"({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, _Tensor) for v in state.values()):
        raise EvalError(f"{path}: expected a plain state dict of tensors")
    return {str(k): tuple(v) for k, v in state.items()}


def published_layout() -> set[str]:
    """The published checkpoints' keys with layer numbers folded (`layer.N.`)."""
    text = package_file("empo:epitome/state_dict_keys.tsv").read_text()
    return {_LAYER.sub(".layer.N.", line.split("\t")[0]) for line in text.splitlines() if line}


def layout_problem(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """What differs from the published key layout, or None."""
    keys = {_LAYER.sub(".layer.N.", k) for k in shapes if not k.endswith(IGNORED_SUFFIXES)}
    expected = published_layout()
    missing, unexpected = sorted(expected - keys), sorted(keys - expected)
    if not (missing or unexpected):
        return None
    parts = [f"{len(items)} {what} (e.g. {', '.join(items[:3])})"
             for what, items in (("missing keys", missing), ("unexpected keys", unexpected))
             if items]
    return "not the published EPITOME key layout: " + "; ".join(parts)


def checkpoint_problems(directory: Path) -> list[str]:
    """One line per missing or malformed finetuned_{ER,EX,IP}.pth in `directory`."""
    directory = Path(directory)
    if not directory.is_dir():
        return [f"{directory} does not exist"]
    problems = []
    for name in CHECKPOINT_FILES.values():
        path = directory / name
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        try:
            problem = layout_problem(state_dict_shapes(path))
        except EvalError as err:
            problem = str(err)
        if problem:
            problems.append(f"{path}: {problem}" if not problem.startswith(str(path)) else problem)
    return problems


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# The sha256 of the published files where one is written down: passing2961/EmpGPT-3 (Lee et al.,
# 2022, whose README links the checkpoints) lists EX and IP in modules/empathy_scorer.py
# (RESOURCES, ParlAI's download check); the EmPO authors copied that list, commented out
# (ondrejsotolar/empo@508bd49 src/diff_epitome.py:26-38). No one lists ER's.
PUBLISHED_SHA256 = {
    "finetuned_EX.pth": "4f43ceb2526e008a2093856208abb878f14236dd54e4fdcdfdd4ccbeb9c08178",
    "finetuned_IP.pth": "e80d1bcfb75f7046961ed71cfd2eada2d939f7f1191e169b0b4aa68e9b6054dc",
}
DIGESTS_FILE = "epitome_checkpoints.json"  # per run: what the diff-EPITOME scores were made with


def checkpoint_digests(directory: Path) -> dict[str, dict[str, str | bool | None]]:
    """Per finetuned_{ER,EX,IP}.pth in `directory`: its sha256, the published one where known
    (PUBLISHED_SHA256) and whether they match (None: nothing published to compare with)."""
    out: dict[str, dict[str, str | bool | None]] = {}
    for name in CHECKPOINT_FILES.values():
        digest = sha256(Path(directory) / name)
        published = PUBLISHED_SHA256.get(name)
        out[name] = {"sha256": digest, "published_sha256": published,
                     "matches_published": None if published is None else digest == published}
    return out
