"""Lego structure recovered from a dense conv weight alone.

A Lego layer folded into an ordinary conv (``fold_lego_to_dense``, or a checkpoint exported
that way) has weight blocks ``W[j, i*b:(i+1)*b] = coef[i, j] * bank[index[i, j]]``: every
output channel's split blocks are scaled copies of a few shared filters. ``factor_weight``
finds the number of splits ``o``, the ``m`` shared filters, the index and the coefficients.

Exact by default: each block must equal its coefficient times its shared filter up to the
rounding of that one multiplication (a few float32 ulps of the block's largest element), so
the fused layer computes what the dense conv computes, to float32 rounding. ``tolerance``
(opt-in) accepts blocks within ``tolerance * max |weight|`` of a scaled shared filter, for
weights that are Lego-like but not exactly so; the output then differs from the dense
conv's by about that much.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# One float32 multiplication rounds by half an ulp; a copy scaled back is within a few.
EXACT = 4 * float(np.finfo(np.float32).eps)
# Split counts tried (LegoNet uses 2 to 8); more would cost seconds per conv for nothing.
MAX_SPLITS = 32


@dataclass
class Factorization:
    bank: np.ndarray        # [m, b, kh, kw], one block of the weight per shared filter
    index: np.ndarray       # [o, n] int32
    coef: np.ndarray        # [o, n] float32
    deviation: float        # largest |block - coef * filter| / max |weight| accepted

    @property
    def splits(self) -> int:
        return self.index.shape[0]

    @property
    def lego_filters(self) -> int:
        return self.bank.shape[0]


def factor_weight(weight: np.ndarray, tolerance: float = 0.0) -> Factorization | None:
    """The Lego factorization of ``weight`` ``[n, c, kh, kw]`` with the fewest splits, or None
    when no split count gives one cheaper than the dense conv. (A layer with ``o`` splits
    also factors with ``2o``, finer and dearer; with fewer, a block spans two splits and is
    not a scaled copy.)"""
    n, c, kh, kw = weight.shape
    for splits in (o for o in range(2, min(c, MAX_SPLITS) + 1) if c % o == 0):
        found = _factor(weight, splits, tolerance)
        if found is not None and found.lego_filters * c * kh * kw + n * splits < n * c * kh * kw:
            return found
    return None


def _factor(weight: np.ndarray, splits: int, tolerance: float) -> Factorization | None:
    n, c, kh, kw = weight.shape
    b = c // splits
    blocks = weight.reshape(n, splits, b * kh * kw).transpose(1, 0, 2).astype(np.float64)
    scale = float(np.abs(weight).max())
    if scale == 0:
        return None
    index = np.zeros((splits, n), np.int32)
    coef = np.zeros((splits, n), np.float32)
    filters: list[np.ndarray] = []
    # Filters by the position of their largest element (the same for every scaled copy).
    by_pivot: dict[int, list[int]] = {}
    deviation = 0.0
    for i in range(splits):
        for j in range(n):
            block = blocks[i, j]
            pivot = int(np.argmax(np.abs(block)))
            peak = block[pivot]
            if peak == 0:
                continue                                   # a zero block: coefficient 0
            # Exact: within a few ulps of the block itself; else within tolerance * scale.
            allowed = max(EXACT * abs(peak), tolerance * scale)
            candidates = by_pivot.get(pivot, [])
            if candidates:
                bank = np.stack([filters[k] for k in candidates])
                factors = peak / bank[:, pivot]
                errors = np.abs(block[None] - factors[:, None] * bank).max(axis=1)
                best = int(np.argmin(errors))
                if errors[best] <= allowed:
                    index[i, j], coef[i, j] = candidates[best], factors[best]
                    deviation = max(deviation, float(errors[best]) / scale)
                    continue
            by_pivot.setdefault(pivot, []).append(len(filters))
            index[i, j], coef[i, j] = len(filters), 1.0
            filters.append(block)
        if len(filters) > (i + 1) * n // 2:
            return None          # no sharing worth having (a generic weight stops at split 0)
    if not filters:
        return None
    bank = np.stack(filters).reshape(len(filters), b, kh, kw).astype(np.float32)
    return Factorization(bank, index, coef, deviation)
