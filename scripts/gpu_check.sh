#!/usr/bin/env bash
# The device half of `make gpu-check` (compress/gpu_check.py says how the halves fit): run from the repository
# root on the GPU machine, with the .gpu folder that `make gpu-check` wrote here carried along. Extra arguments go
# to `python -m edgeqa.compress.gpu_check run` (e.g. --steps 100 200). Results: $OUT/gpu_check.json, $OUT/gpu_check.log.
set -euo pipefail

OUT=${OUT:-runs/gpu-check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ ! -d .gpu/teacher ]; then
    echo "gpu_check: no .gpu/teacher here: run 'make gpu-check' where ../shared is, and carry .gpu" >&2
    exit 2
fi

# The machine's own Python has torch, transformers, tokenizers, safetensors, numpy, PyYAML and tqdm; wheels put
# in .gpu/whl (pip download --no-deps ...) are installed only if one of them is missing.
NEEDED="import torch, transformers, tokenizers, safetensors, numpy, yaml, tqdm"
if ! "$PY" -c "$NEEDED" 2>/dev/null; then
    if compgen -G ".gpu/whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    "$PY" -c "$NEEDED" || { echo "gpu_check: missing Python packages (above); add their wheels to .gpu/whl" >&2; exit 2; }
fi

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -m edgeqa.compress.gpu_check run --folder .gpu --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
