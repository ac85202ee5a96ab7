"""The few TVM calls whose spelling changed across releases, in one place (TVM 0.27).

0.27 moved Relax constants to ``tvm.ir.Constant`` (payload in ``.value``), struct info to
``.ty`` and ``tvm.nd.array`` to ``tvm.runtime.tensor``; the next release is one edit here.
"""
from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi

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


def nchw_shape(expr, rank: int = 4) -> tuple | None:
    """``(batch, c, h, w)`` of a 4-D (or ``rank``-D) tensor-typed expression: known
    integers, except that the batch is None when it is symbolic (chosen at call time);
    None for anything else."""
    shape = getattr(expr.ty, "shape", None)
    dims = list(shape) if shape is not None else []
    if len(dims) != rank:
        return None
    try:
        rest = tuple(int(d) for d in dims[1:])
    except (TypeError, ValueError):
        return None
    batch = int(dims[0]) if isinstance(dims[0], tvm.tirx.IntImm) else None
    return (batch,) + rest


def shape_list(expr) -> list | None:
    """The shape of a tensor-typed expression for messages: ints, symbolic dimensions by name."""
    shape = getattr(expr.ty, "shape", None)
    if shape is None:
        return None
    return [int(d) if isinstance(d, tvm.tirx.IntImm) else str(d) for d in shape]


def same_shape(a, b) -> bool:
    """Whether two tensor-typed expressions have the same shape (symbolic dimensions
    included: the same variable)."""
    shape_a, shape_b = getattr(a.ty, "shape", None), getattr(b.ty, "shape", None)
    return shape_a is not None and shape_b is not None and \
        tvm_ffi.structural_equal(shape_a, shape_b)


HOST = 1   # DLPack's kDLCPU


def to_device(array: np.ndarray, device) -> tvm.runtime.Tensor:
    """``array`` as a TVM tensor on ``device``: shared, not copied, when it is already in host
    memory in a layout TVM takes (C-contiguous, 64-byte aligned, writeable); else a copy."""
    array = np.ascontiguousarray(array)
    if device.dlpack_device_type() == HOST and array.flags.writeable:
        try:
            return tvm.runtime.from_dlpack(array)
        except RuntimeError:   # "Data is not aligned to 64 bytes": TVM will not share it
            pass
    return tvm.runtime.tensor(array, device)


def to_numpy(tensor: tvm.runtime.Tensor) -> np.ndarray:
    """A host tensor shared with numpy (no copy: 1.6 MB took 0.4 ms to copy); others copied."""
    if tensor.device.dlpack_device_type() == HOST:
        return np.from_dlpack(tensor)
    return tensor.numpy()
