"""``precision="bf16"`` for the matmuls of a model with constant weights (a classifier): the
weights stored in bf16, the products and sums in fp32, the input and output float32.

At batch 1 such a matmul reads each weight once, so its time is the time to read the weights,
which the other kernels of a model have pushed out of the cache: lego_resnet50's classifier
(2048 x 1000) took 0.56 ms with 8 MB of fp32 weights and 0.42 ms with 4 MB of bf16, alone
with the cache flushed (``schedules/cpu_gemv.py``; 2-core Intel Xeon, 2026-12-01). The
input stays float32 (it is small), so the only rounding is the weights'.

The weights cannot stay a Relax constant behind an ``astype``: ``FoldConstant`` would turn
them back into fp32. So the matmul becomes a ``call_tir`` of a PrimFunc that widens bf16 bits
(``op.bf16.to_float32``, a shift) as it reads them.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx

from ..op import bf16
from ..support.tvm_compat import const_array

MATMUL_NAME = "matmul_bf16_weights"


def matmul_prim_func(batch, inputs: int, outputs: int) -> tvm.tirx.PrimFunc:
    """``out[b, j] = sum_k x[b, k] * float32(w[k, j])``: x float32 ``[batch, inputs]``, w bf16
    bits ``[inputs, outputs]``."""
    x = te.placeholder((batch, inputs), "float32", name="x")
    w = te.placeholder((inputs, outputs), bf16.STORAGE, name="w")
    k = te.reduce_axis((0, inputs), name="k")
    out = te.compute((batch, outputs),
                     lambda b, j: te.sum(x[b, k] * bf16.to_float32(w[k, j]), axis=k),
                     name="matmul")
    # No global_symbol: the pipeline names it after its GlobalVar.
    return te.create_prim_func([x, w, out], index_dtype_override="int64").without_attr(
        "global_symbol")


def with_bf16_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """``mod`` with each ``R.matmul(x, w)`` of a 2-D float32 input and a 2-D float32 constant
    ``w`` reading ``w`` in bf16 (``_RewriteMatmuls``); how many were rewritten."""
    rewriter = _RewriteMatmuls(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get(), rewriter.rewritten


@relax.expr_functor.mutator
class _RewriteMatmuls(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.matmul = tvm.ir.Op.get("relax.matmul")
        self.rewritten = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not call.op.same_as(self.matmul) or len(call.args) != 2:
            return call
        x, weights = call.args
        w = const_array(weights)
        x_type, out_type = x.ty, call.ty
        if (w is None or w.ndim != 2 or w.dtype != np.float32 or x_type.ndim != 2
                or x_type.dtype != "float32" or out_type.dtype != "float32"
                or x_type.shape is None):
            return call
        batch = x_type.shape[0]
        batch = int(batch) if isinstance(batch, tirx.IntImm) else tirx.Var("batch", "int64")
        func = matmul_prim_func(batch, *w.shape)
        gvar = self.builder_.add_func(func, MATMUL_NAME)
        self.rewritten += 1
        return relax.call_tir(gvar, [x, relax.const(bf16.bf16_bits(w))],
                              out_ty=relax.TensorType(out_type.shape, "float32"))
