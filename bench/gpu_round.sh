#!/usr/bin/env bash
# GPU benchmark of issue 18 (item 4): SPO update, round, peak memory and generation at the real
# SD-1.5 (512 px) and SDXL (1024 px) architectures, random weights; ours (run_round) vs the
# official structure (fp16 weights, deep-copied reference); torch.compile on and off. One command,
# at most ~8 min (the Python part is killed at 470 s; each section is skipped past its budget).
# Usage: bash bench/gpu_round.sh [extra args of python -m bench.gpu_round]
#        bash bench/gpu_round.sh --smoke   # CPU, tiny models: the same code, to check it runs
# PYTHON=/path/to/python chooses the interpreter (default .venv/bin/python, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
echo "== $(date -u) on $(hostname); python: $PY"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "(no nvidia-smi)"
"$PY" -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), '| diffusers', diffusers.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)" \
  || { echo "missing packages: install torch, diffusers, transformers, peft, accelerate, open_clip_torch"; exit 2; }
PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True} timeout 470 "$PY" -m bench.gpu_round "$@"
rc=$?
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv 2>/dev/null || true
if [ -n "${OUT:-}" ]; then cp bench/results/gpu_round.json bench/results/gpu_round.md "$OUT"/ 2>/dev/null || true; fi
exit $rc
