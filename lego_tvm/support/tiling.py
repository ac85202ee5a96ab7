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


def num_cores(target: Target) -> int:
    cores = target.attrs.get("num-cores")
    return int(cores) if cores else 1


def divisors(n: int, limit: int | None = None) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0 and (limit is None or d <= max(1, limit))]


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
