"""The few TVM calls whose spelling changed across releases, in one place (TVM 0.27).

0.27 moved Relax constants to ``tvm.ir.Constant`` (payload in ``.value``), struct info to
``.ty`` and ``tvm.nd.array`` to ``tvm.runtime.tensor``; the next release is one edit here.
"""
from __future__ import annotations

import numpy as np
import tvm

Constant = tvm.ir.Constant


def const_array(expr) -> np.ndarray | None:
    """The numpy value of a Relax constant, or None if ``expr`` is not a constant."""
    return expr.value.numpy() if isinstance(expr, Constant) else None


def static_shape(expr) -> tuple[int, ...] | None:
    """The shape of a tensor-typed expression, if every dimension is a known integer."""
    shape = getattr(expr.ty, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(d) for d in shape)
    except (TypeError, ValueError):  # symbolic dimension
        return None


def to_device(array: np.ndarray, device) -> tvm.runtime.Tensor:
    return tvm.runtime.tensor(np.ascontiguousarray(array), device)
