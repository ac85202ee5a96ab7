"""The Relax pipeline lego-tvm compiles with, phase by phase."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.relax.backend import cpu_generic, cuda
from tvm.s_tir import dlight
from tvm.target import Target

from ..frontend.pytorch import as_program, to_relax
from .nan_legalize import NAN_KEEPING
from ..op.fused_op import GATHER_SPEC_ATTR, lego_kernels, spec_of
from ..schedules.cpu_generic import ParallelInjective, TiledReduction
from ..schedules.cpu_gemv import StreamingGemv
from ..schedules.cpu_pool import SeparableMaxPool
from ..schedules.cuda import BANK_BLOCK, FusedLegoCudaRule, narrow_indices
from ..schedules.lego_cpu import FusedLegoRule
from ..schedules.simd import simd_profile
from ..support.targets import codegen_target
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
    """Dispatch sort, scan and sampling ops to their library kernels, as ``tvm.compile``'s
    default pipeline does (``torch.topk``, ``cumsum``, ``max(x, dim)``), then legalize to TIR
    and fuse neighbouring ops: the PrimFuncs that get scheduled (or tuned)."""
    with target:
        return tvm.transform.Sequential(_backend(target).library_dispatch_passes(target) + [
            relax.transform.LegalizeOps(customize_legalize_map=NAN_KEEPING),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ])(mod)


def schedule(mod: tvm.IRModule, target: Target, database=None
             ) -> tuple[tvm.IRModule, list[str], list[Fallback]]:
    """Give every PrimFunc a schedule: a tuned record from ``database`` when one matches,
    else the hand-written default rules, else (no rule applies) TVM's own default, as plain
    ``tvm.compile`` would build it. Returns the module, the tuned functions' names and the
    fallbacks; a fused Lego kernel with no schedule is an error."""
    tuned: list[str] = []
    if database is not None:
        with target, database:
            applied = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        for gvar, func in applied.functions_items():
            if isinstance(func, tirx.PrimFunc) and not func.same_as(mod[gvar]):
                tuned.append(gvar.name_hint)
                applied[gvar] = func.with_attr("tirx.is_scheduled", True)
        mod = applied
    errors: dict[int, str] = {}
    if _is_gpu(target):
        rules = (FusedLegoCudaRule(), dlight.gpu.Matmul(), dlight.gpu.GEMV(),
                 dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(), dlight.gpu.Fallback())
    else:
        rules = (FusedLegoRule(), StreamingGemv(), SeparableMaxPool(), dlight.cpu.GEMV(),
                 TiledReduction(), ParallelInjective())
    with target:
        mod = dlight.ApplyDefaultSchedule(*[_FallThrough(rule, errors) for rule in rules])(mod)
    if _is_gpu(target):
        for gvar, func, _ in lego_kernels(mod):
            mod[gvar] = narrow_indices(func)
    fallbacks = []
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and not func.attrs.get("tirx.is_scheduled", False):
            reason = errors.get(tvm_ffi.structural_hash(func), "no lego-tvm schedule rule matches it")
            if _is_lego_kernel(func):
                raise UnscheduledError(f"the fused Lego kernel {gvar.name_hint} got no schedule "
                                       f"({reason}). Please report this model.")
            mod[gvar] = _tvm_default(func, target)
            fallbacks.append(Fallback(gvar.name_hint, reason))
    return mod, tuned, fallbacks


@dataclass
class Fallback:
    """A function lego-tvm's rules did not schedule, left to TVM's own default (on CPUs,
    the loops as written, which LLVM may still vectorize; on GPUs, dlight's Fallback)."""
    function: str
    reason: str


def _tvm_default(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    if _is_gpu(target):
        with target:
            scheduled = dlight.ApplyDefaultSchedule(dlight.gpu.Fallback())(
                tvm.IRModule({"main": func}))["main"]
        return scheduled
    return func.with_attr("tirx.is_scheduled", True)


def _is_lego_kernel(func: tirx.PrimFunc) -> bool:
    return spec_of(func) is not None or spec_of(func, GATHER_SPEC_ATTR) is not None


class _FallThrough(dlight.ScheduleRule):
    """A rule that raises on a function it cannot handle passes it to the next rule; the
    error is kept (by the function's structural hash) to explain a fallback."""

    def __init__(self, rule: dlight.ScheduleRule, errors: dict[int, str]):
        self.rule = rule
        self.errors = errors

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except Exception as err:  # noqa: BLE001 - TVM ScheduleError and friends
            message = str(err).splitlines()[-1] if str(err) else type(err).__name__
            log.debug("lego-tvm: %s does not apply: %s", type(self.rule).__name__, message)
            self.errors[tvm_ffi.structural_hash(func)] = f"{type(self.rule).__name__}: {message}"
            return None


def build(mod: tvm.IRModule, target: Target):
    """Scheduled Relax module -> VM executable."""
    with target:
        tail = tvm.transform.Sequential(_backend(target).dataflow_lower_passes(target)
                                        + _backend(target).finalize_passes(target))
        return tvm.compile(mod, target=codegen_target(target), relax_pipeline=tail)


def schedule_and_build(lowered: tvm.IRModule, target: Target, database=None
                       ) -> tuple[object, list[str], list[Fallback]]:
    """``schedule`` then ``build``. If the build fails, each function a generic rule
    scheduled is built alone; those that fail go back to TVM's default schedule (a
    ``Fallback``) and the model is built again. A fused Lego kernel that does not build is
    an error. Returns (executable, tuned function names, fallbacks)."""
    # The functions as lowered (dlight's pass may update the module it is given in place).
    originals = {gvar.name_hint: func for gvar, func in lowered.functions_items()}
    mod, tuned, fallbacks = schedule(lowered, target, database)
    try:
        return build(mod, target), tuned, fallbacks
    except Exception as err:  # noqa: BLE001 - TVM raises TVMError and friends
        broken = _unbuildable(mod, target, skip=set(tuned) | {f.function for f in fallbacks})
        if not broken:
            raise
        failed_lego = [name for name in broken if _is_lego_kernel(mod[name])]
        if failed_lego:
            raise KernelBuildError(f"the fused Lego kernel(s) {', '.join(failed_lego)} do not "
                                   f"build: {_first_line(err)}. Please report this model.") from err
        for name, error in broken.items():
            gvar = mod.get_global_var(name)
            mod[gvar] = _tvm_default(originals[name], target)
            fallbacks.append(Fallback(name, f"its schedule does not build: {error}"))
        return build(mod, target), tuned, fallbacks


class KernelBuildError(RuntimeError):
    """A fused Lego kernel's schedule does not build."""


def _unbuildable(mod: tvm.IRModule, target: Target, skip: set[str]) -> dict:
    """Each scheduled PrimFunc (not in ``skip``) that fails to build alone: name -> error."""
    broken = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or gvar.name_hint in skip:
            continue
        try:
            tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                        target=target)
        except Exception as err:  # noqa: BLE001
            broken[gvar.name_hint] = _first_line(err)
    return broken


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _backend(target: Target):
    return cuda.pipeline if _is_gpu(target) else cpu_generic.pipeline


def _is_gpu(target: Target) -> bool:
    return target.kind.name == "cuda"
