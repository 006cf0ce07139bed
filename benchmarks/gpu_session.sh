#!/usr/bin/env bash
# Issue 8's GPU measurements as one prepared run for a lent device machine, sized to fit one
# 10-minute device call (not yet timed on a GPU; the two stages are limited to 330 s and 240 s).
#
#   bash benchmarks/gpu_session.sh OUT_DIR
#
# Runs from the repository root without installing corrbench: the repository and plugins/ go on
# PYTHONPATH, and wheels for what the machine lacks (diffusers, importlib_metadata, platformdirs: see
# benchmarks/README.md) are installed from .whl/ when that folder is there. Writes to OUT_DIR:
# nvidia-smi.csv, eager.json/.log (bf16 and fp16 at batch 1, 8, 16, channels-last, the official
# structure as baseline, host-sync counts, parity) and compile.json/.log (torch.compile at batch 16).
# Each stage has its own time limit, so a slow compile cannot cost the eager numbers.
#
# GPU_SESSION_SMOKE=1 swaps in the tiny CPU model (tests/test_gpu_script.py runs it that way);
# PYTHON picks the interpreter (default python3, the one holding torch on the device machines).
set -uo pipefail
out="${1:-${OUT:-gpu-session}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/corrbench-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/corrbench-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD:$PWD/plugins${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1

if [[ -n "${GPU_SESSION_SMOKE:-}" ]]; then
    device=(--tiny --device cpu --num-steps 4 --save-indices 3,0 --iters 1 --unet-iters 1)
    eager=(--dtypes fp32 --batch-sizes 1)
    compiled=(--dtypes fp32 --batch-sizes 1 --compile-backend eager)
    limit_eager=120 limit_compile=120
else
    device=(--device cuda --models sd15)
    eager=(--dtypes bf16,fp16 --batch-sizes 1,8,16 --sync-debug)
    # "default" compiles in about a minute; max-autotune can take longer than the stage's limit
    compiled=(--dtypes bf16 --batch-sizes 16 --compile-mode default)
    limit_eager=330 limit_compile=240
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$out/nvidia-smi.csv" 2>&1
fi

status=0
timeout "$limit_eager" "$py" benchmarks/gpu_throughput.py "${device[@]}" "${eager[@]}" --official --channels-last \
    --check --json "$out/eager.json" 2>&1 | tee "$out/eager.log" || status=1
timeout "$limit_compile" "$py" benchmarks/gpu_throughput.py "${device[@]}" "${compiled[@]}" --channels-last --compile \
    --json "$out/compile.json" 2>&1 | tee "$out/compile.log" || status=1
exit "$status"
