"""x86 vector units for the fused Lego schedule (``lego_cpu.py`` holds the body).

AVX2 has 16 ymm registers of 8 floats; a register tile of up to 12 accumulators leaves the
rest for the weight vectors (one per filter block of the tile) and the inputs, each broadcast
from memory (``vbroadcastss``). AVX-512 has 32 zmm
registers of 16 floats. The Lego tile of one task (128 KiB) stays in a Zen / Skylake L2
(512 KiB / 1 MiB per core) next to the input rows it is computed from.
"""
from __future__ import annotations

from tvm.target import Target

from .tiling import SimdProfile

AVX2 = SimdProfile("avx2", lanes=8, accumulators=12, lego_tile_bytes=128 * 1024)
AVX512 = SimdProfile("avx512", lanes=16, accumulators=24, lego_tile_bytes=128 * 1024)

# LLVM CPU names with AVX-512F (a target may also say "+avx512f" in mattr).
_AVX512_CPUS = ("skylake-avx512", "cascadelake", "cooperlake", "icelake", "tigerlake",
                "sapphirerapids", "graniterapids", "znver4", "znver5", "x86-64-v4")


def x86_profile(target: Target) -> SimdProfile:
    mcpu = str(target.attrs.get("mcpu", ""))
    mattr = " ".join(str(a) for a in target.attrs.get("mattr", []) or [])
    return AVX512 if "avx512f" in mattr or mcpu.startswith(_AVX512_CPUS) else AVX2
