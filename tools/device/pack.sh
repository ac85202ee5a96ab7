#!/usr/bin/env bash
# Pack what the GPU check needs on a lent GPU machine that has no package registry: the
# apache-tvm, apache-tvm-ffi and xgboost-cpu wheels for its Python (3.12) and a wheel of this
# checkout, installed into one folder, tarred, xz-compressed and split in two halves.
#
#   bash tools/device/pack.sh     # writes .device/a/kit.tar.xz.00 and .device/b/kit.tar.xz.01
#
# Why two halves: each device call carries at most 64 MiB, the checkout included (about
# 14 MB, mostly tuning logs), and TVM's compiler library alone is 62 MB compressed. The
# first call leaves half a in /tmp on the machine, the second brings half b and runs the
# check (DEVELOPERS.md, "Running the GPU check"). Rerun after any change to lego_tvm/ or
# schedules/: the kit holds an installed copy of this checkout, not the checkout itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON_VERSION=${PYTHON_VERSION:-3.12}   # the device image's python3 (KINDS.md)
HALF_BYTES=$((44 * 1024 * 1024))         # each half + the checkout stays under 64 MiB
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
done
echo "[pack] downloading wheels for CPython $PYTHON_VERSION"
python3 -m pip download -q --no-deps --only-binary=:all: --implementation cp \
    --python-version "$PYTHON_VERSION" "${platforms[@]}" -d "$work/wheels" \
    apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 xgboost-cpu
echo "[pack] building a wheel of this checkout"
python3 -m pip wheel -q --no-deps -w "$work/wheels" .

echo "[pack] installing them into one folder"
python3 -m pip install -q --no-deps --no-compile --ignore-requires-python --only-binary=:all: \
    --implementation cp \
    --python-version "$PYTHON_VERSION" "${platforms[@]}" --target "$work/site" \
    "$work"/wheels/*.whl
# Not needed to compile or run models: vendored sources (25 MB) and the WebGPU runtime.
rm -rf "$work/site/tvm/3rdparty" "$work/site/tvm/web" "$work/site/bin"

echo "[pack] compressing (a few minutes)"
tar -C "$work/site" -cf - . | xz -T0 -6 > "$work/kit.tar.xz"
size=$(stat -c %s "$work/kit.tar.xz")
if (( size > 2 * HALF_BYTES )); then
    echo "[pack] the kit is $((size >> 20)) MiB, more than two halves of" \
         "$((HALF_BYTES >> 20)) MiB" >&2
    exit 1
fi
rm -rf .device/a .device/b
mkdir -p .device/a .device/b
split -b "$HALF_BYTES" -d "$work/kit.tar.xz" "$work/kit.tar.xz."
mv "$work/kit.tar.xz.00" .device/a/
[ -e "$work/kit.tar.xz.01" ] || : > "$work/kit.tar.xz.01"   # a kit that fits in one half
mv "$work/kit.tar.xz.01" .device/b/
git rev-parse HEAD > .device/b/commit
echo "[pack] kit $((size >> 20)) MiB for commit $(cut -c1-10 .device/b/commit):"
ls -l .device/a .device/b
