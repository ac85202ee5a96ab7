#!/usr/bin/env bash
# Runs on the lent GPU machine, in its copy of the checkout: unpack the kit that
# tools/device/pack.sh made (half a left in /tmp/lego-kit by the first call, half b carried
# by this one), smoke-test one layer, run tools/gpu_check.py and put its results in $OUT.
# DEVELOPERS.md, "Running the GPU check", gives the two device calls.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/console.log") 2>&1
budget_s=${BUDGET_S:-420}          # gpu_check's own budget; the device call allows 600 s
# Extra gpu_check arguments: "--device cpu --quick ..." rehearses this script without a GPU.
read -r -a extra <<< "${GPU_CHECK_ARGS:-}"

site=/tmp/lego-site
half_a=$(ls /tmp/lego-kit/kit.tar.xz.00 .device/a/kit.tar.xz.00 2>/dev/null | head -1)
if ! [ -d "$site/tvm" ]; then
    if [ -z "$half_a" ] || ! [ -e .device/b/kit.tar.xz.01 ]; then
        echo "gpu-check.sh: the kit's halves are missing (half a: '${half_a}')." >&2
        echo "Run tools/device/pack.sh here, then both device calls of DEVELOPERS.md." >&2
        exit 3
    fi
    mkdir -p "$site"
    cat "$half_a" .device/b/kit.tar.xz.01 | xz -d | tar -x -C "$site" || exit 3
fi
echo "kit built from commit $(cat .device/b/commit 2>/dev/null)"
python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' || {
    echo "gpu-check.sh: the kit is for Python 3.12; python3 here is $(python3 --version)" >&2
    exit 3; }

export PYTHONPATH=$site PYTHONUNBUFFERED=1
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
# TVM's CUDA runtime needs libcudart.so.13: the toolkit's, else the one PyTorch brought.
torch_cudart=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))' \
               2>/dev/null)
export LD_LIBRARY_PATH="$CUDA_PATH/lib64:${torch_cudart}:${LD_LIBRARY_PATH:-}"
nvidia-smi -L || true
python3 -c 'import torch, tvm, lego_tvm
print("torch", torch.__version__, "tvm", tvm.__version__, "TVM sees a GPU:", tvm.cuda().exist)' || {
    echo "gpu-check.sh: PyTorch, TVM or lego_tvm does not import (above)" >&2
    exit 3; }

# NVRTC (TVM's default) compiles the CUDA source when a module loads; nvcc is the fallback.
if ! python3 tools/gpu_check.py --smoke --out /tmp/gpu-smoke "${extra[@]}"; then
    echo "gpu-check.sh: the smoke test failed with NVRTC; trying TVM_CUDA_COMPILE_MODE=nvcc"
    export TVM_CUDA_COMPILE_MODE=nvcc
    python3 tools/gpu_check.py --smoke --out /tmp/gpu-smoke "${extra[@]}" || exit 4
fi

timeout $((budget_s + 90)) python3 tools/gpu_check.py --out /tmp/gpu-check --budget-s "$budget_s" \
    "${extra[@]}"
rc=$?
# $OUT keeps files at most two folders down; the tuning log lies deeper, so send a tarball.
tar -C /tmp -czf "$OUT/gpu-check.tar.gz" gpu-check
cp /tmp/gpu-check/results.md /tmp/gpu-check/results.json "$OUT/" 2>/dev/null
echo "gpu_check exit status $rc"
exit $rc
