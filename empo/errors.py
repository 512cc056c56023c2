"""The project's exception types: the CLI turns each into one clear message and exit status 2."""
from __future__ import annotations


class EmpoError(Exception):
    """Base of every error a user can fix: bad input, bad config, missing files."""


class ConfigError(EmpoError):
    """An experiment config, override, profile or table that does not validate."""


class DataError(EmpoError):
    """Input data that cannot be used: a malformed file, a missing split, a missing label."""


class TrainError(EmpoError):
    """A training stage that cannot start: missing model, adapter or DeepSpeed config."""


class EvalError(EmpoError):
    """An evaluation input or checkpoint that cannot be used."""


class ModelError(TrainError, EvalError):
    """A base model, tokenizer or adapter that cannot be used (by training and evaluation alike:
    one loader, `empo.models`)."""


class LaunchError(EmpoError):
    """A submission that cannot be made: unknown executor, missing image, rejected partition."""
