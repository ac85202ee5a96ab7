"""The Relax pipeline lego-tvm compiles with, phase by phase."""
from __future__ import annotations

import logging
from dataclasses import replace

import tvm
from tvm import relax, tirx
from tvm.relax.backend import cpu_generic, cuda
from tvm.s_tir import dlight
from tvm.target import Target

from ..frontend.pytorch import as_program, to_relax
from ..op.fused_op import lego_kernels
from ..schedules.cpu_generic import ParallelInjective, TiledReduction
from ..schedules.cuda import BANK_BLOCK, FusedLegoCudaRule, narrow_indices
from ..schedules.lego_cpu import FusedLegoRule
from ..schedules.simd import simd_profile
from ..support.tvm_compat import Constant
from ..transform.blocked_layout import LAYOUTS, PropagateBlockedLayout
from ..transform.fuse_conv2d import FuseDenseConv2d, FuseLegoConv2d
from ..transform.report import LegoReport

log = logging.getLogger("lego_tvm")


class UnscheduledError(RuntimeError):
    """A PrimFunc got no schedule; it would run as naive serial loops."""


def fuse_convs(mod: tvm.IRModule, target: Target, lego: bool = True,
               weight_tolerance: float = 0.0, layout: str = "NCHW"
               ) -> tuple[tvm.IRModule, LegoReport]:
    """Recognize and fuse Lego convolutions (unless ``lego`` is False), then move every
    remaining ordinary conv onto the same kernel; with ``layout="NCHWc"``, chains of fused
    kernels pass tensors to each other in NCHW[x]c (x = SIMD lanes; CPU targets only).
    ``mod`` is already constant-folded."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: choose one of {', '.join(LAYOUTS)}")
    if layout != "NCHW" and _is_gpu(target):
        raise ValueError(f"layout={layout!r}: blocked layouts are for CPU targets; the CUDA "
                         "kernel reads and writes NCHW")
    report = LegoReport()
    lanes = BANK_BLOCK if _is_gpu(target) else simd_profile(target).lanes
    # Pixels-innermost maps need NCHW on both sides of the kernel.
    flat = layout == "NCHW" and not _is_gpu(target) and simd_profile(target).flat_1x1
    if lego:
        fuse = FuseLegoConv2d(simd_lanes=lanes, weight_tolerance=weight_tolerance, flat_1x1=flat)
        mod = fuse(mod)
        report = fuse.report
    dense = FuseDenseConv2d(simd_lanes=lanes, flat_1x1=flat)
    mod = dense(mod)
    report.dense_convs = dense.convs
    if layout == "NCHWc":
        propagate = PropagateBlockedLayout(lanes)
        mod = propagate(mod)
        for layer in report.layers + report.dense_convs:
            if layer.output in propagate.changed:
                in_block, out_block, layer.kernel = propagate.changed[layer.output]
                layer.spec = replace(layer.spec, in_block=in_block, out_block=out_block)
    return mod, report


def import_and_fuse(model, example_inputs: tuple, target: Target, lego: bool = True,
                    weight_tolerance: float = 0.0, layout: str = "NCHW",
                    dynamic_batch: bool = False) -> tuple[tvm.IRModule, LegoReport]:
    """A PyTorch module (exported here) or ``torch.export`` program, imported and fused as
    ``compile`` does (``fuse_convs``): the start of every build, tuning task and check."""
    program = as_program(model, example_inputs, dynamic_batch)
    return fuse_convs(to_relax(program), target, lego=lego, weight_tolerance=weight_tolerance,
                      layout=layout)


def outputs_not_computed(mod: tvm.IRModule) -> list[int]:
    """Positions (in the flattened output) of ``main``'s outputs that a call does not compute:
    constants, which the VM returns as its own buffer on every call, and inputs passed
    through, which are the caller's array. The model copies these before returning them."""
    func = mod["main"]
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    flags: list[bool] = []

    def walk(expr):
        while isinstance(expr, relax.Var) and expr in bindings:
            expr = bindings[expr]
        if isinstance(expr, relax.Tuple):
            for field in expr.fields:
                walk(field)
        else:
            flags.append(isinstance(expr, Constant) or any(
                expr.same_as(param) for param in func.params))

    walk(func.body.body)
    return [i for i, flag in enumerate(flags) if flag]


def lower(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Legalize to TIR and fuse neighbouring ops: the PrimFuncs that get scheduled (or tuned)."""
    with target:
        return tvm.transform.Sequential([
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ])(mod)


def schedule(mod: tvm.IRModule, target: Target, database=None) -> tuple[tvm.IRModule, list[str]]:
    """Give every PrimFunc a schedule: a tuned record from ``database`` when one matches,
    else the hand-written default rules. Returns the module and the tuned functions' names."""
    tuned: list[str] = []
    if database is not None:
        with target, database:
            applied = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        for gvar, func in applied.functions_items():
            if isinstance(func, tirx.PrimFunc) and not func.same_as(mod[gvar]):
                tuned.append(gvar.name_hint)
                applied[gvar] = func.with_attr("tirx.is_scheduled", True)
        mod = applied
    if _is_gpu(target):
        rules = (FusedLegoCudaRule(), dlight.gpu.Matmul(), dlight.gpu.GEMV(),
                 dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(), dlight.gpu.Fallback())
    else:
        rules = (FusedLegoRule(), dlight.cpu.GEMV(), TiledReduction(), ParallelInjective())
    with target:
        mod = dlight.ApplyDefaultSchedule(*[_FallThrough(rule) for rule in rules])(mod)
    if _is_gpu(target):
        for gvar, func, _ in lego_kernels(mod):
            mod[gvar] = narrow_indices(func)
    unscheduled = [gv.name_hint for gv, f in mod.functions_items()
                   if isinstance(f, tirx.PrimFunc) and not f.attrs.get("tirx.is_scheduled", False)]
    if unscheduled:
        raise UnscheduledError(f"no default schedule for {', '.join(unscheduled)}; they would run "
                               "as naive serial loops. Please report this model.")
    return mod, tuned


class _FallThrough(dlight.ScheduleRule):
    """A rule that raises on a function it cannot handle passes it to the next rule."""

    def __init__(self, rule: dlight.ScheduleRule):
        self.rule = rule

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except Exception as err:  # noqa: BLE001 - TVM ScheduleError and friends
            log.debug("lego-tvm: %s does not apply: %s", type(self.rule).__name__,
                      str(err).splitlines()[-1] if str(err) else type(err).__name__)
            return None


def build(mod: tvm.IRModule, target: Target):
    """Scheduled Relax module -> VM executable."""
    backend = cuda.pipeline if _is_gpu(target) else cpu_generic.pipeline
    with target:
        tail = tvm.transform.Sequential(backend.dataflow_lower_passes(target)
                                        + backend.finalize_passes(target))
        return tvm.compile(mod, target=target, relax_pipeline=tail)


def _is_gpu(target: Target) -> bool:
    return target.kind.name == "cuda"
