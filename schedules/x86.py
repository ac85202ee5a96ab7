"""x86 vector units for the fused Lego schedule (``lego_cpu.py`` holds the body).

AVX2 has 16 ymm registers of 8 floats; a register tile of up to 12 accumulators leaves the
rest for the weight vectors (one per filter block of the tile) and the inputs, each broadcast
from memory (``vbroadcastss``). AVX-512 has 32 zmm
registers of 16 floats. The Lego tile of one task (128 KiB) stays in a Zen / Skylake L2
(512 KiB / 1 MiB per core) next to the input rows it is computed from.
"""
from __future__ import annotations

from tvm.target import Target, codegen

from .vector_unit import SimdProfile

AVX2 = SimdProfile("avx2", lanes=8, accumulators=12, lego_tile_bytes=128 * 1024)
AVX512 = SimdProfile("avx512", lanes=16, accumulators=24, lego_tile_bytes=128 * 1024)


def x86_profile(target: Target) -> SimdProfile:
    # Asks LLVM whether the target's CPU (mcpu, plus mattr) has AVX-512F, so every CPU name
    # LLVM knows counts (a list of names missed "rocketlake", the name LLVM gives to some
    # AVX-512 Xeon hosts).
    return AVX512 if codegen.target_has_features("avx512f", target) else AVX2
