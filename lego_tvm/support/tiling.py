"""Small helpers for choosing tile sizes that divide loop extents (no tail predicates), and
for tunable choices in a schedule."""
from __future__ import annotations

from tvm import s_tir
from tvm.target import Target


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(1, limit))


def vector_block(extent: int, lanes: int, max_vectors: int = 2) -> int:
    """Columns per register tile: whole vectors when the extent allows, else a divisor."""
    if extent % lanes == 0:
        return lanes * largest_divisor_at_most(extent // lanes, max_vectors)
    return largest_divisor_at_most(extent, max_vectors * lanes)


def power_of_two_lanes(extent: int, lanes: int) -> int:
    """The widest vector of at most ``lanes`` lanes, a power of two, that divides ``extent``."""
    width = 1
    while width < lanes and extent % (width * 2) == 0:
        width *= 2
    return width


def num_cores(target: Target) -> int:
    cores = target.attrs.get("num-cores")
    return int(cores) if cores else 1


def divisors(n: int, limit: int | None = None) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0 and (limit is None or d <= max(1, limit))]


def largest_register_tile(filter_blocks: int, rows: int, cols: int, max_blocks: int,
                  accumulators: int) -> tuple[int, int, int]:
    """(filter blocks, rows, cols) of a register tile of vector accumulators, each a divisor
    of its extent: at most ``max_blocks`` filter blocks, the most accumulators the registers
    allow with room for the filter blocks' weight vectors and one broadcast input; then the
    fewest loads per step (a weight vector per filter block, a broadcast per pixel or tile);
    then the longest rows."""
    tiles = [(f, r, c) for f in divisors(filter_blocks, max_blocks)
             for r in divisors(rows) for c in divisors(cols)
             if f * r * c <= accumulators and f * r * c + f <= accumulators + 2]
    return max(tiles, key=lambda t: (t[0] * t[1] * t[2], -(t[0] + t[1] * t[2]), t[2]))


def sample_divisor(sch: s_tir.Schedule, extent: int, limit: int, default: int):
    """A tunable choice among the divisors of ``extent`` up to ``limit`` (uniform prior),
    first sampled as ``default``."""
    return sample_choice(sch, divisors(extent, limit), default)


def sample_choice(sch: s_tir.Schedule, choices: list[int], default: int):
    """A tunable choice among ``choices`` (uniform prior), first sampled as ``default``."""
    return sch.sample_categorical(choices, [1.0 / len(choices)] * len(choices),
                                  decision=choices.index(default) if default in choices else None)


def has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # noqa: BLE001 - TVM raises a generic ScheduleError
        return False
