"""x86 vector units for the fused Lego schedule (``lego_cpu.py`` holds the body).

AVX2 has 16 ymm registers of 8 floats; a register tile of up to 12 accumulators leaves the
rest for the weight vectors (one per filter block of the tile) and the inputs, each broadcast
from memory (``vbroadcastss``). AVX-512 has 32 zmm
registers of 16 floats. The Lego tile of one task (128 KiB) stays in a Zen / Skylake L2
(512 KiB / 1 MiB per core) next to the input rows it is computed from.
"""
from __future__ import annotations

from dataclasses import replace

from tvm.target import Target, codegen

from ..support.targets import AMX_FEATURES
from .vector_unit import SimdProfile

AVX2 = SimdProfile("avx2", lanes=8, accumulators=12, lego_tile_bytes=128 * 1024)
# Measured on a 2-core Xeon with two 512-bit FMA units per core (2026-11-30, 3x3 layers,
# o=2, ratio 0.5): with one row of 14 pixels per task, fused stages ran 512ch 14x14 at 155
# GFLOP/s and stage by stage at 319 (the 2.4 MB bank, read once per task, outgrew the
# 2 MiB L2); register tiles of 4-8 filter blocks ran 10-40% below 2 blocks x 7 pixels.
# The 1x1 layers with maps stored pixels innermost ran 1.05-1.75x faster (ResNet-50's at 56x56
# and 28x28, same machine); AVX2 keeps the packed maps, for which its tuning logs were made.
AVX512 = SimdProfile("avx512", lanes=16, accumulators=24, lego_tile_bytes=128 * 1024,
                     fused_min_pixels=32, max_filter_blocks=2, flat_1x1=True)


def x86_profile(target: Target) -> SimdProfile:
    # Asks LLVM whether the target's CPU (mcpu, plus mattr) has AVX-512F, so every CPU name
    # LLVM knows counts (a list of names missed "rocketlake", the name LLVM gives to some
    # AVX-512 Xeon hosts).
    if not codegen.target_has_features("avx512f", target):
        return AVX2
    amx = all(codegen.target_has_features(f, target) for f in AMX_FEATURES)
    return replace(AVX512, amx_bf16=True) if amx else AVX512
