"""The field names of a trl config class (SFTConfig, DPOConfig, ... : a training section's
`trl_config`), read from the installed trl and transformers sources with `ast` (no import: a
login node validates a config without loading torch).

Values are checked by trl itself when the stage builds its config (`train/common.py`).
"""
from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path

# Fields the stage sets itself, or that would break the project's semantics.
REFUSED = {
    "output_dir": "the stage writes into its run directory",
    "seed": "the run's seed is its directory (seeds: [...])",
    "data_seed": "the run's seed is its directory (seeds: [...])",
    "deepspeed": "set <stage>.deepspeed (a preset or a JSON path)",
    "gradient_accumulation_steps": "derived from global_batch_size / (per-device batch x GPUs)",
    "use_cpu": "chosen from the hardware the job runs on",
    "save_strategy": "the stage checkpoints every save_steps to resume after preemption",
    "resume_from_checkpoint": "the stage resumes from its last checkpoint itself",
    "dataloader_persistent_workers": "it would freeze the per-epoch draw of rejected responses",
    "num_train_epochs": "set <stage>.num_train_epochs",
}


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _class_fields(path: Path, name: str, seen: int = 0) -> set[str]:
    """Annotated fields of class `name` in `path` and of its bases (followed through imports)."""
    tree = ast.parse(path.read_text())
    imports = {alias.asname or alias.name: (node.module or "", node.level)
               for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            fields = {n.target.id for n in node.body
                      if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
            for base in node.bases:
                if isinstance(base, ast.Name) and base.id in imports and seen < 5:
                    module, level = imports[base.id]
                    found = _module_file(path, module, level, base.id)
                    if found is not None:
                        fields |= _class_fields(found, base.id, seen + 1)
            return fields
    return set()


def _module_file(importer: Path, module: str, level: int, name: str) -> Path | None:
    if level:  # relative: from .base_config import _BaseConfig
        base = importer.parent
        for _ in range(level - 1):
            base = base.parent
        candidate = base.joinpath(*module.split(".")).with_suffix(".py")
        return candidate if candidate.exists() else None
    if name == "TrainingArguments":  # from transformers import TrainingArguments
        root = _package_dir("transformers")
        return root / "training_args.py" if root else None
    return None


@lru_cache(maxsize=None)
def trl_fields(spec: str) -> frozenset[str] | None:
    """The fields of the trl config class `spec` ("trainer/dpo_config.py:DPOConfig", a training
    section's `trl_config`); None where trl is not installed."""
    root = _package_dir("trl")
    if root is None:
        return None
    relative, name = spec.split(":")
    path = root / relative
    return frozenset(_class_fields(path, name)) if path.exists() else None
