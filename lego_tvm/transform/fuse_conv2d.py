"""The rewriting passes: Lego convolutions (and ordinary ones) onto the fused operator.

``FuseLegoConv2d``. Contract: run after ``FoldConstant`` (so the one-hot merge kernels are
constants) and before ``LegalizeOps``. Each Lego layer that ``recognize.find_lego_layers``
proves exact, with the BatchNorm / bias / residual add / ReLU after it, becomes one
``call_tir`` of the fused compute-once/gather-sum PrimFunc taking the (packed) bank, an int32
index table ``[o, n]``, a coefficient table ``[o, n]`` and a bias ``[n]``. Everything else is
returned unchanged; every near miss is logged and listed in ``report.skipped``.

``FuseDenseConv2d`` (run after it) moves the remaining ordinary convolutions onto the same
kernel as one-split layers, so the whole model runs on one well-scheduled conv kernel.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..op.fused_op import flat_pixels_unsupported, lego_conv2d_prim_func, pack_bank
from ..recognize.lego import LegoMatch, find_dense_convs, find_lego_layers
from ..recognize.gather import find_gather_lego_layers
from .report import LegoLayerReport, LegoReport, SkippedLayer, count_other_layers
from ..support.tiling import largest_divisor_at_most


@tvm.transform.module_pass(opt_level=0, name="FuseLegoConv2d")
class FuseLegoConv2d:
    """Fuse proven Lego layers; afterwards ``self.report`` says what was rewritten, what was
    skipped and why.

    ``simd_lanes``: fp32 lanes of the target's vectors; the bank is packed in blocks of that
    many filters (or of the largest divisor of m below it). ``flat_1x1``: 1x1 stride-1 layers
    whose pixel count is a multiple of the lanes store their Lego maps pixels innermost
    instead (``LegoConvSpec.flat_pixels``, the bank unpacked). ``weight_tolerance``: ordinary
    convs whose weights are folded Lego layers are fused too, exactly (0, the default) or
    within this relative tolerance (see ``factor_weights``); None leaves them alone.
    """

    def __init__(self, simd_lanes: int = 8, weight_tolerance: float | None = 0.0,
                 flat_1x1: bool = False):
        self.report = LegoReport()
        self.lanes = _Lanes(simd_lanes, flat_1x1)
        self.weight_tolerance = weight_tolerance

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.report = report = LegoReport()

        near_misses: set[str] = set()

        def find(func):
            matches, rejections = find_lego_layers(func)
            gathered, gather_rejections = find_gather_lego_layers(func)
            report.skipped += [SkippedLayer(r.var_name, r.reason)
                               for r in rejections + gather_rejections]
            near_misses.update(name for r in rejections for name in r.convs)
            return matches + gathered

        mod, matches = _rewrite(mod, find, self.lanes, "fused_lego_conv2d")
        if self.weight_tolerance is not None:
            mod, folded = _rewrite(
                mod, lambda func: find_dense_convs(func, self.weight_tolerance,
                                                   frozenset(near_misses)),
                self.lanes, "fused_lego_conv2d")
            matches += folded
        report.layers = [LegoLayerReport(m.var_name, _model_spec(m), m.folded, m.form, m.kernel,
                                         m.anchor.name) for m in matches]
        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                weights, macs = count_other_layers(func)
                report.other_weights += weights
                report.other_macs += macs
        return mod


@tvm.transform.module_pass(opt_level=0, name="FuseDenseConv2d")
class FuseDenseConv2d:
    """Run ordinary constant-weight convs (and their epilogues) on the fused kernel;
    ``self.convs`` lists them."""

    def __init__(self, simd_lanes: int = 8, flat_1x1: bool = False):
        self.convs: list[LegoLayerReport] = []
        self.lanes = _Lanes(simd_lanes, flat_1x1)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod, matches = _rewrite(mod, find_dense_convs, self.lanes, "fused_conv2d")
        self.convs = [LegoLayerReport(m.var_name, _model_spec(m), m.folded, kernel=m.kernel,
                                      output=m.anchor.name)
                      for m in matches]
        return mod


@dataclass(frozen=True)
class _Lanes:
    simd: int          # fp32 lanes of the target's vectors
    flat_1x1: bool     # 1x1 stride-1 layers vectorize along their pixels


def _rewrite(mod: tvm.IRModule, find: Callable[[relax.Function], list[LegoMatch]],
             lanes: _Lanes, name: str) -> tuple[tvm.IRModule, list[LegoMatch]]:
    """Replace every match ``find`` returns by a call of the fused PrimFunc."""
    rewriter = _Rewriter(mod, name)
    found: list[LegoMatch] = []
    for gvar, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        matches = find(func)
        for m in matches:
            _fit_bank_to_lanes(m, lanes)
        if matches:
            rewriter.matches = {m.anchor: m for m in matches}
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        found += matches
    # The replaced slices, convs, sums and epilogue ops are now dead.
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get()), found


def _model_spec(match: LegoMatch):
    """The spec as the model has it (without the bank's padding filters), for the report."""
    return replace(match.spec, lego_filters=match.spec.lego_filters - match.padding_filters)


def _fit_bank_to_lanes(match: LegoMatch, vector: _Lanes) -> None:
    """Choose the Lego maps' layout and the bank's packing block: pixels innermost (bank
    unpacked) where ``vector.flat_1x1`` allows it; else the SIMD width, the bank padded with
    unused zero filters to a multiple of it when that costs at most a quarter more
    compute-once work (a recovered m of 31 would otherwise pack in blocks of 1: scalar
    code); else the largest divisor of m up to the width."""
    s, lanes = match.spec, vector.simd
    if (vector.flat_1x1 and flat_pixels_unsupported(s) is None
            and (s.height * s.width) % lanes == 0):
        match.spec = replace(s, flat_pixels=True, bank_block=1)
        return
    m = match.spec.lego_filters
    padded = -(-m // lanes) * lanes
    if padded != m and padded <= 1.25 * m:
        extra = np.zeros((padded - m,) + match.bank.shape[1:], match.bank.dtype)
        match.bank = np.concatenate([match.bank, extra])
        match.padding_filters = padded - m
        match.spec = replace(match.spec, lego_filters=padded, bank_block=lanes)
    else:
        match.spec = replace(match.spec, bank_block=largest_divisor_at_most(m, lanes))


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, name: str):
        super().__init__(mod)
        self.name = name
        self.matches: dict[relax.Var, LegoMatch] = {}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        match = self.matches.get(binding.var)
        if match is None:
            super().visit_var_binding_(binding)
            return
        gvar = self.builder_.add_func(lego_conv2d_prim_func(match.spec), self.name)
        match.kernel = gvar.name_hint
        bank = pack_bank(match.bank, match.spec.bank_block)
        args = [self.visit_expr(match.data), relax.const(bank), relax.const(match.index),
                relax.const(match.coef), relax.const(match.bias)]
        if match.residual is not None:
            args.append(self.visit_expr(match.residual))
        s = match.spec
        batch = match.data.ty.shape[0]          # an int, or the symbolic batch
        out_ty = relax.TensorType((batch, s.out_channels, s.out_height, s.out_width), s.dtype)
        call = self.builder_.normalize(relax.call_tir(gvar, args, out_ty=out_ty))
        # Keep the variable: its users (and the function output) stay as they were.
        self.builder_.emit_normalized(relax.VarBinding(binding.var, call))
