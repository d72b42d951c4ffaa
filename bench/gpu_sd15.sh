#!/usr/bin/env bash
# GPU benchmark of issue 9 (item 4): SD-1.5 architecture at random weights, bf16, SDPA; SPO update
# and round against the official structure, generation against the stock pipeline. At most ~8 min
# (the Python part is killed at 470 s; each section is skipped past its budget).
# Usage: bash bench/gpu_sd15.sh [extra args of python -m bench.gpu_sd15]
# Needs a Python with CUDA torch, diffusers, transformers, peft, accelerate and open_clip
# (PYTHON=/path/to/python to choose it; default .venv/bin/python, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
echo "== $(date -u) on $(hostname); python: $PY"
nvidia-smi || echo "nvidia-smi failed"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
"$PY" -c "import torch, diffusers, transformers, peft, open_clip; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), '| diffusers', diffusers.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)" \
  || { echo "missing packages: install torch (CUDA), diffusers, transformers, peft, accelerate, open_clip_torch"; exit 2; }
PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True} timeout 470 "$PY" -m bench.gpu_sd15 "$@"
rc=$?
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv || true
if [ -n "${OUT:-}" ]; then cp bench/results/gpu_sd15.json bench/results/gpu_sd15.md "$OUT"/ 2>/dev/null || true; fi
exit $rc
