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

from dataclasses import replace

from .fused_op import lego_conv2d_prim_func, pack_bank
from .schedules.tiling import largest_divisor_at_most
from .recognize import LegoMatch, find_lego_layers
from .report import LegoLayerReport, LegoReport, SkippedLayer, count_other_layers


@tvm.transform.module_pass(opt_level=0, name="FuseLegoConv2d")
class FuseLegoConv2d:
    """The pass; after it runs, ``self.report`` says what it rewrote and what it skipped.

    ``simd_lanes``: fp32 lanes of the target's vectors; the bank is packed in blocks of that
    many filters (or the largest divisor of m below it).
    """

    def __init__(self, simd_lanes: int = 8):
        self.report = LegoReport()
        self.simd_lanes = simd_lanes

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.report = LegoReport()
        rewriter = _Rewriter(mod, self.simd_lanes)
        for gvar, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            matches, rejections = find_lego_layers(func)
            for m in matches:
                m.spec = replace(m.spec, bank_block=largest_divisor_at_most(
                    m.spec.lego_filters, self.simd_lanes))
            self.report.layers += [LegoLayerReport(m.var_name, m.spec, m.folded) for m in matches]
            self.report.skipped += [SkippedLayer(r.var_name, r.reason) for r in rejections]
            if matches:
                rewriter.matches = {m.anchor: m for m in matches}
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        # The replaced slices, convs and sums are now dead.
        mod = relax.transform.DeadCodeElimination()(rewriter.builder_.get())
        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                weights, macs = count_other_layers(func)
                self.report.other_weights += weights
                self.report.other_macs += macs
        return mod


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, simd_lanes: int):
        super().__init__(mod)
        self.matches: dict[relax.Var, LegoMatch] = {}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        match = self.matches.get(binding.var)
        if match is None:
            super().visit_var_binding_(binding)
            return
        func = lego_conv2d_prim_func(match.spec)
        gvar = self.builder_.add_func(func, "fused_lego_conv2d")
        bank = pack_bank(match.bank, match.spec.bank_block)
        args = [self.visit_expr(match.data), relax.const(bank), relax.const(match.index),
                relax.const(match.coef), relax.const(match.bias)]
        if match.residual is not None:
            args.append(self.visit_expr(match.residual))
        s = match.spec
        out_ty = relax.TensorType((s.batch, s.out_channels, s.out_height, s.out_width), s.dtype)
        call = self.builder_.normalize(relax.call_tir(gvar, args, out_ty=out_ty))
        # Keep the variable: its users (and the function output) stay as they were.
        self.builder_.emit_normalized(relax.VarBinding(binding.var, call))
