#!/usr/bin/env bash
# Issue 17's acceptance run on one GPU of >= 80 GB: <= 8 minutes, no network, JSON to $OUT.
# See bench/gpu_acceptance.py for what it measures; --cpu-smoke runs it on tiny widths (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0
exec timeout 480 python bench/gpu_acceptance.py "$@"
