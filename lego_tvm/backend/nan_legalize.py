"""Legalizations of ReLU, clip and max-pool that keep NaN, as PyTorch does.

TVM 0.27 lowers ``max(a, b)`` as ``select(a > b, a, b)`` (measured: ``max(x, 0)`` of a NaN is 0,
``max(0, x)`` is NaN), so its own ReLU (``max(x, 0)``), clip and max-pool turn a NaN into a
number, and an all-NaN input gave finite outputs. PyTorch propagates NaN through all three,
and people rely on that to see that something upstream broke. Here each compares so that a
NaN falls through: ``x < 0 ? 0 : x`` is NaN for a NaN ``x``; the max-pool reducer keeps a
NaN once it has met one. Passed to ``LegalizeOps`` by ``pipeline.lower``.
"""
from __future__ import annotations

import tvm
from tvm import relax, te, tirx, topi

from ..op.max_pool import SEPARABLE_MAX_POOL, separable_max_pool
from ..support.tir_nan import is_nan


def _relu(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    def compute(x):
        zero = tirx.const(0, x.dtype)
        return te.compute(x.shape, lambda *i: tirx.Select(x(*i) < zero, zero, x(*i)),
                          name="relu")
    return bb.call_te(compute, call.args[0], primfunc_name_hint="relu")


def _clip(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    x, low, high = call.args

    def compute(x):
        lo, hi = (tirx.const(float(bound.value), x.dtype) for bound in (low, high))
        return te.compute(x.shape, lambda *i: tirx.Select(
            x(*i) < lo, lo, tirx.Select(x(*i) > hi, hi, x(*i))), name="clip")
    return bb.call_te(compute, x, primfunc_name_hint="clip")


def _nan_max(dtype: str):
    """max that returns NaN once either side is NaN (``b > a`` is false for a NaN ``a``)."""
    return te.comm_reducer(
        lambda a, b: tirx.Select(tirx.Or(is_nan(b), b > a), b, a),
        lambda t: tirx.const(float("-inf"), t), name="nan_max")


def _max_pool2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    attrs = call.attrs
    if attrs.layout != "NCHW" or attrs.out_layout != "NCHW":
        return tvm.ir.Op.get("relax.nn.max_pool2d").get_attr("FLegalize")(bb, call)
    kh, kw = (int(v) for v in attrs.pool_size)
    sh, sw = (int(v) for v in attrs.strides)
    dh, dw = (int(v) for v in attrs.dilation)
    top, left, bottom, right = (int(v) for v in attrs.padding)
    out_h, out_w = int(call.ty.shape[2]), int(call.ty.shape[3])

    if (dh, dw) == (1, 1):
        return bb.call_te(separable_max_pool(kh, kw, sh, sw, top, left, out_h, out_w),
                          call.args[0], primfunc_name_hint="max_pool2d",
                          primfunc_attrs={SEPARABLE_MAX_POOL: True})

    def compute(x):
        height, width = int(x.shape[2]), int(x.shape[3])
        # The last window of a ceil_mode pool may reach past the bottom / right padding.
        bottom_pad = max(bottom, (out_h - 1) * sh + (kh - 1) * dh + 1 - height - top)
        right_pad = max(right, (out_w - 1) * sw + (kw - 1) * dw + 1 - width - left)
        padded = topi.nn.pad(x, [0, 0, top, left], [0, 0, bottom_pad, right_pad],
                             pad_value=float("-inf"), name="pool_pad")
        ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
        reduce = _nan_max(x.dtype)
        return te.compute(
            (x.shape[0], x.shape[1], out_h, out_w),
            lambda n, c, i, j: reduce(padded[n, c, i * sh + ry * dh, j * sw + rx * dw],
                                      axis=[ry, rx]), name="max_pool2d")
    return bb.call_te(compute, call.args[0], primfunc_name_hint="max_pool2d")


NAN_KEEPING = {"relax.nn.relu": _relu, "relax.clip": _clip, "relax.nn.max_pool2d": _max_pool2d}
