"""Relax graphs for pass tests, built the way the PyTorch importer spells a Lego layer."""
from __future__ import annotations

import numpy as np
from tvm import relax

F32 = "float32"


def lego_parts(c=8, n=6, m=3, o=2, d=3, seed=0):
    """A random bank and one-hot-times-coefficient merge kernels ``[n, m, 1, 1]`` per split."""
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((m, c // o, d, d)).astype(F32)
    index = rng.integers(0, m, (o, n)).astype("int32")
    coef = rng.standard_normal((o, n)).astype(F32)
    merges = []
    for i in range(o):
        merge = np.zeros((n, m, 1, 1), F32)
        merge[np.arange(n), index[i], 0, 0] = coef[i]
        merges.append(merge)
    return bank, merges, index, coef


def lego_before(x_shape, banks, merges, slices=None, stride=1, padding=1, dilation=1,
                bn=None, residual=False, relu=False):
    """``sum_i conv2d(conv2d(x[:, slice_i], bank_i), merge_i)`` then optional BN/add/ReLU.

    ``banks``: one array (shared) or a list (one per split); ``slices``: ``[(begin, end)]``.
    """
    o = len(merges)
    banks = banks if isinstance(banks, list) else [banks] * o
    b = banks[0].shape[1]
    slices = slices or [(i * b, (i + 1) * b) for i in range(o)]
    shared = relax.const(banks[0]) if all(bk is banks[0] for bk in banks) else None
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, F32))
    n = merges[0].shape[0]
    params = [x]
    if residual:
        h = (x_shape[2] + 2 * padding - banks[0].shape[2]) // stride + 1
        r = relax.Var("r", relax.TensorType((x_shape[0], n, h, h), F32))
        params.append(r)
    with bb.function("main", params):
        with bb.dataflow():
            out = None
            for i, merge in enumerate(merges):
                part = bb.emit(relax.op.strided_slice(x, axes=[1], begin=[slices[i][0]],
                                                      end=[slices[i][1]]))
                bank = shared if shared is not None else relax.const(banks[i])
                lego = bb.emit(relax.op.nn.conv2d(part, bank, strides=stride, padding=padding,
                                                  dilation=dilation))
                unit = bb.emit(relax.op.nn.conv2d(lego, relax.const(merge)))
                out = (bb.emit(relax.op.add(unit, relax.const(0.0, F32))) if out is None
                       else bb.emit(relax.op.add(out, unit)))
            if bn is not None:
                gamma, beta, mean, var = (relax.const(a) for a in bn)
                stats = bb.emit(relax.op.nn.batch_norm(out, gamma, beta, mean, var, axis=1,
                                                       training=False))
                out = bb.emit(relax.TupleGetItem(stats, 0))
            if residual:
                out = bb.emit(relax.op.add(out, r))
            if relu:
                out = bb.emit(relax.op.nn.relu(out))
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    return bb.get()


def fused_expected(x_shape, spec, args, residual=False):
    """``main`` as the pass should leave it: one call_tir of the fused operator."""
    from lego_tvm.op.fused_op import lego_conv2d_prim_func

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, F32))
    params = [x]
    if residual:
        r = relax.Var("r", relax.TensorType((spec.batch, spec.out_channels, spec.out_height,
                                             spec.out_width), F32))
        params.append(r)
    with bb.function("main", params):
        with bb.dataflow():
            gvar = bb.add_func(lego_conv2d_prim_func(spec), "fused_lego_conv2d")
            call_args = [x] + [relax.const(a) for a in args] + ([r] if residual else [])
            out_ty = relax.TensorType((spec.batch, spec.out_channels, spec.out_height,
                                       spec.out_width), F32)
            out = bb.emit(relax.call_tir(gvar, call_args, out_ty=out_ty))
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    return bb.get()
