#!/bin/bash
# Queue every stage of every seed of an experiment through the plain wrappers (jobs/*.sbatch),
# each after the jobs it reads (--dependency=afterok), as `empo submit` orders them:
#   jobs/submit-all.sh CONFIG [KEY=VALUE ...] [--dry-run]
# Per seed: sft -> dpo; eval baseline | sft | sft_dpo after what it evaluates; the baseline of
# seeds after the first is shared from the first (greedy decoding); the aggregate after every
# eval. Stages already DONE are skipped. Resources come from the config's `cluster:` section (the
# same requests as `empo submit`), jobs are named <experiment>:<stage>:<variant>:seed-<s>, logs go
# to results/<name>/jobs/sbatch/ and every job is recorded in results/<name>/manifest.json, so
# `empo status results/<name>` and `empo cancel results/<name>` see them.
set -euo pipefail
exec empo job submit-all "$@" --jobs-dir "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
