"""``FuseLegoConv2d``: replace every proven Lego convolution by one fused operator.

Contract: run after ``FoldConstant`` (so the one-hot merge kernels are constants) and before
``LegalizeOps``. Each Lego layer that ``recognize.find_lego_layers`` proves exact, with the
BatchNorm / bias / residual add / ReLU after it, becomes one ``call_tir`` of the fused
compute-once/gather-sum PrimFunc taking the bank, an int32 index table ``[o, n]``, a
coefficient table ``[o, n]`` and a bias ``[n]``. Everything else is returned unchanged;
every near miss is logged and listed in ``report.skipped``.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .fused_op import lego_conv2d_prim_func
from .recognize import LegoMatch, find_lego_layers
from .report import LegoLayerReport, LegoReport, SkippedLayer


@tvm.transform.module_pass(opt_level=0, name="FuseLegoConv2d")
class FuseLegoConv2d:
    """The pass; after it runs, ``self.report`` says what it rewrote and what it skipped."""

    def __init__(self):
        self.report = LegoReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.report = LegoReport()
        rewriter = _Rewriter(mod)
        for gvar, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            matches, rejections = find_lego_layers(func)
            self.report.layers += [LegoLayerReport(m.var_name, m.spec, m.folded) for m in matches]
            self.report.skipped += [SkippedLayer(r.var_name, r.reason) for r in rejections]
            if matches:
                rewriter.matches = {m.anchor: m for m in matches}
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        mod = rewriter.builder_.get()
        # The replaced slices, convs and sums are now dead.
        return relax.transform.DeadCodeElimination()(mod)


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.matches: dict[relax.Var, LegoMatch] = {}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        match = self.matches.get(binding.var)
        if match is None:
            super().visit_var_binding_(binding)
            return
        func = lego_conv2d_prim_func(match.spec)
        gvar = self.builder_.add_func(func, "fused_lego_conv2d")
        args = [self.visit_expr(match.data), relax.const(match.bank), relax.const(match.index),
                relax.const(match.coef), relax.const(match.bias)]
        if match.residual is not None:
            args.append(self.visit_expr(match.residual))
        s = match.spec
        out_ty = relax.TensorType((s.batch, s.out_channels, s.out_height, s.out_width), s.dtype)
        call = self.builder_.normalize(relax.call_tir(gvar, args, out_ty=out_ty))
        # Keep the variable: its users (and the function output) stay as they were.
        self.builder_.emit_normalized(relax.VarBinding(binding.var, call))
