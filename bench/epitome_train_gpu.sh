#!/usr/bin/env bash
# Prepared GPU run (issue 16): train the three EPITOME classifiers (ER, EX, IP) with roberta-base
# and the original recipe on one GPU, then leave report.json (test accuracy, macro-F1, confusion
# matrices, Sharma et al.'s numbers side by side) and the log in $OUT. No network: roberta-base
# must already be in the local Hugging Face cache (HF_HOME) or be given as a directory.
#
#   OUT=/path/to/results bash bench/epitome_train_gpu.sh
#
# Environment: OUT (required), EPITOME_DATA (annotation CSVs; default ../shared/data/epitome-reddit
# next to the checkout), EPITOME_ENCODER (default roberta-base), EPITOME_SEED (default 12),
# CHECKPOINT_DIR (where the three ~1 GB .pth files go; default a fresh directory under /tmp,
# kept out of $OUT on purpose).
set -euo pipefail
: "${OUT:?set OUT to the directory that receives report.json}"
cd "$(dirname "$0")/.."
DATA=${EPITOME_DATA:-../shared/data/epitome-reddit}
ENCODER=${EPITOME_ENCODER:-roberta-base}
SEED=${EPITOME_SEED:-12}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-$(mktemp -d /tmp/epitome-classifiers.XXXXXX)/out}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
[ -d .venv ] && . .venv/bin/activate
mkdir -p "$OUT"
python - <<'PY' > "$OUT/environment.txt" 2>&1 || true
import platform, torch, transformers
print("python", platform.python_version(), "torch", torch.__version__,
      "transformers", transformers.__version__)
print("cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
PY
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no GPU visible')"
start=$(date +%s)
python -m empo.cli epitome train --data "$DATA" --encoder "$ENCODER" --seed "$SEED" \
    --out "$CHECKPOINT_DIR" --device cuda 2> >(tee "$OUT/train.log" >&2) | tee "$OUT/summary.txt"
echo "wall seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/summary.txt"
cp "$CHECKPOINT_DIR/report.json" "$OUT/report.json"
echo "checkpoints: $CHECKPOINT_DIR" | tee -a "$OUT/summary.txt"
