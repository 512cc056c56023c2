"""The executors (`cluster.executor`) by name, and the config fields of the one that has its own
(SLURM: `SlurmOptions`), declared below the config layer so that config.py composes them without
importing launch. Each executor is a backend module, empo/launch/backends/<name>.py, which
re-exports its fields; nothing here imports submitit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from empo.errors import ConfigError
from empo.validate import SBATCH_OPTION, Range, sbatch_option_problem

EXECUTORS = ("local", "debug", "slurm")   # each one a module of empo/launch/backends/
OFFLINE_BY_DEFAULT = ("slurm",)           # compute nodes rarely reach the Hub: jobs run offline


@dataclass
class SlurmOptions:
    """The SLURM backend's fields, given as `cluster.*` keys (sbatch options of every job)."""

    partition: str | None = field(default=None, metadata={
        "help": "sbatch --partition (None: the site's default)."})
    account: str | None = field(default=None, metadata={
        "help": "sbatch --account (None: the site's default)."})
    qos: str | None = field(default=None, metadata={
        "help": "sbatch --qos (None: the site's default)."})
    cpu_partition: str | None = field(default=None, metadata={
        "help": "partition of the CPU-only jobs (baseline share, aggregate); None = `partition`."})
    wckey: str | None = field(default=None, metadata={
        "help": "sbatch --wckey for every job (None: no --wckey; sites that enforce wckeys set "
                "theirs)."})
    mail_user: str | None = field(default=None, metadata={
        "help": "sbatch --mail-user for every job."})
    mail_type: str | None = field(default=None, metadata={
        "help": "sbatch --mail-type for every job (e.g. END,FAIL)."})
    signal_lead_s: int | None = field(default=None, metadata={
        "help": "seconds before the time limit SLURM signals a training job to requeue "
                "(`--signal=USR2@<lead>`); None: derived from the planned save (`empo plan`), at "
                "least 90.",
        "range": Range(1, 24 * 3600)})
    slurm_extra: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "any other sbatch option for every job, long name without dashes -> value "
                "(`{constraint: a100, exclusive: true}`); given last, so it wins over the fields "
                "above."})

    def check_slurm_options(self) -> None:
        """ConfigError naming a `slurm_extra` entry sbatch could not take as one option."""
        for key, value in self.slurm_extra.items():
            if not SBATCH_OPTION.fullmatch(key):
                raise ConfigError(f"cluster.slurm_extra: {key!r} is not an sbatch long option "
                                  "name (lowercase letters, digits and '-', e.g. 'constraint')")
            owned = sbatch_option_problem(key)
            if owned and value is not None:  # null: the option is not given at all
                raise ConfigError(f"cluster.slurm_extra.{key}: not settable ({owned})")
            if value is not None and (not isinstance(value, (str, int, float, bool))
                                      or isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"cluster.slurm_extra.{key}: {value!r} must be a single "
                                  "string, number, true/false or null")
