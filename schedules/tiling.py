"""Small helpers for choosing tile sizes that divide loop extents (no tail predicates)."""
from __future__ import annotations

from tvm.target import Target

# Accumulators a register tile may hold: 12 of the 16 AVX2 ymm registers; the rest hold the
# weight vector and the broadcast inputs.
ACCUMULATOR_REGISTERS = 12


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(1, limit))


def vector_block(extent: int, lanes: int, max_vectors: int = 2) -> int:
    """Columns per register tile: whole vectors when the extent allows, else a divisor."""
    if extent % lanes == 0:
        return lanes * largest_divisor_at_most(extent // lanes, max_vectors)
    return largest_divisor_at_most(extent, max_vectors * lanes)


def vector_lanes(target: Target, dtype_bits: int = 32) -> int:
    """fp32 lanes of the widest SIMD unit the target names (AVX-512, AVX2/NEON 128-bit pairs)."""
    text = str(target.attrs.get("mcpu", "")) + " " + " ".join(
        str(a) for a in target.attrs.get("mattr", []) or [])
    if "avx512" in text or any(c in text for c in ("skylake-avx512", "icelake", "sapphirerapids",
                                                   "cascadelake", "znver4", "znver5")):
        return 512 // dtype_bits
    if "aarch64" in str(target.attrs.get("mtriple", "")):
        return 128 // dtype_bits
    return 256 // dtype_bits


def num_cores(target: Target) -> int:
    cores = target.attrs.get("num-cores")
    return int(cores) if cores else 1
