"""Timing primitives: the median of Python calls, and alternating rounds of them.

The compile path (choosing the compute-once backend), tuning (checking records against the
default schedule) and the benchmarks all time with these, so they are measured the same way.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

ROUNDS, REPEAT, WARMUP = 3, 7, 2


def median_ms(run: Callable[[], object], repeat: int, warmup: int) -> float:
    """Milliseconds of ``run()``: the median of ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def best_of_rounds(runs: list[Callable[[], object]], rounds: int = ROUNDS) -> list[float]:
    """Milliseconds of each run: the best over ``rounds`` alternating rounds of medians, so
    that a burst of load elsewhere on a shared machine does not decide."""
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            best[i] = min(best[i], median_ms(run, REPEAT, WARMUP))
    return best
