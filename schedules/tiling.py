"""Small helpers for choosing tile sizes that divide loop extents (no tail predicates)."""
from __future__ import annotations

from dataclasses import dataclass

from tvm.target import Target


@dataclass(frozen=True)
class SimdProfile:
    """What the CPU schedules need to know about a vector unit (fp32)."""
    name: str
    lanes: int             # fp32 lanes per vector register
    accumulators: int      # vector registers a register tile may hold as accumulators; the
                           # rest hold the weight vector and the broadcast inputs
    lego_tile_bytes: int   # Lego feature tile of one parallel task: fits the per-core L2


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(1, limit))


def vector_block(extent: int, lanes: int, max_vectors: int = 2) -> int:
    """Columns per register tile: whole vectors when the extent allows, else a divisor."""
    if extent % lanes == 0:
        return lanes * largest_divisor_at_most(extent // lanes, max_vectors)
    return largest_divisor_at_most(extent, max_vectors * lanes)


def num_cores(target: Target) -> int:
    cores = target.attrs.get("num-cores")
    return int(cores) if cores else 1
