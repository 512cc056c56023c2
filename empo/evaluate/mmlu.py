"""MMLU through lm-evaluation-harness: hf model + optional peft adapter, `mmlu` = group accuracy."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from empo.errors import EvalError
from empo.models import check_adapter
from empo.store import atomic_write_text

# lm-eval result entries that describe the machine or the tokenizer's tokens, not the evaluation
DROPPED_KEYS = ("pretty_env_info", "samples", "tokenizer_pad_token", "tokenizer_eos_token",
                "tokenizer_bos_token", "eot_token_id", "upper_git_hash")
SECRET_ARGS = ("token", "use_auth_token", "hf_token")


def clean_results(results: dict[str, Any]) -> dict[str, Any]:
    """The results without environment dumps, tokenizer tokens, samples or auth tokens."""
    cleaned = {k: v for k, v in results.items() if k not in DROPPED_KEYS}
    config = dict(cleaned.get("config") or {})
    if isinstance(config.get("model_args"), dict):
        config["model_args"] = {k: v for k, v in config["model_args"].items()
                                if k not in SECRET_ARGS}
    if config:
        cleaned["config"] = config
    return cleaned


def accuracy(results: dict[str, Any], task: str) -> float:
    """acc of a task or group (`acc,none`) from lm-eval's results."""
    for section in ("results", "groups"):
        entry = (results.get(section) or {}).get(task) or {}
        for key in ("acc,none", "acc"):
            if isinstance(entry.get(key), (int, float)):
                return float(entry[key])
    raise EvalError(f"lm-eval reported no accuracy for '{task}' "
                    f"(got: {', '.join(sorted(results.get('results') or {}))})")


def run_mmlu(model: str, adapter: Path | None = None, tasks: Sequence[str] = ("mmlu",),
             num_fewshot: int = 5, include_path: Path | None = None, batch_size: int = 8,
             limit: int | None = None, dtype: str = "auto", device: str | None = None,
             results_path: Path | None = None) -> dict[str, float]:
    """Run lm-eval; `mmlu` = accuracy of the first requested task/group. The full results JSON
    (cleaned) is written atomically to `results_path` when given."""
    if not tasks:
        raise EvalError("MMLU: no task given")
    if num_fewshot < 0:
        raise EvalError(f"MMLU num_fewshot must be >= 0, got {num_fewshot}")
    if include_path is not None and not Path(include_path).is_dir():
        raise EvalError(f"MMLU include path {include_path} is not a directory")
    if adapter is not None:
        check_adapter(model, Path(adapter))
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    manager = None
    if include_path is not None:  # indexing lm-eval's own tasks takes seconds: skip if not needed
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if not all(t in manager.all_tasks for t in tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise EvalError(f"lm-eval knows no task or group {', '.join(unknown)}"
                        f"{'' if include_path else ' (a local task needs --include-path)'}")
    model_args: dict[str, Any] = {"pretrained": str(model), "dtype": dtype}
    if adapter is not None:
        model_args["peft"] = str(adapter)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        results = simple_evaluate(model="hf", model_args=model_args, tasks=list(tasks),
                                  num_fewshot=num_fewshot, batch_size=batch_size, device=device,
                                  limit=limit, task_manager=manager, log_samples=False)
    except OSError as err:
        raise EvalError(f"lm-eval cannot load model '{model}' ({err})") from None
    if results is None:  # not rank 0
        return {}
    metrics = {"mmlu": accuracy(results, tasks[0])}
    if results_path is not None:
        text = json.dumps(clean_results(results), indent=2, default=handle_non_serializable)
        atomic_write_text(Path(results_path), text + "\n")
    return metrics
