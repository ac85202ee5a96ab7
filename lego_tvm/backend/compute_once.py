"""What computes each fused kernel's Lego feature maps.

``"tvm"`` (the default): TVM's generated kernel does the whole layer with a direct conv.
``"winograd"``: the 3x3 stride-1 layers compute their maps by Winograd F(4x4, 3x3) (F(2x2,
3x3) where the output is smaller than 16x16), in the same fused TVM kernel
(``op/winograd.py``).
``"onednn"``: oneDNN
computes the ``o*m`` maps (the splits folded into the batch, one convolution with the bank;
see ``onednn.py``) and a TVM kernel does the gather-sum and its epilogue. ``"auto"``: each
fused kernel is built and timed every way it can run, here and now (direct, F(2x2, 3x3),
F(4x4, 3x3), oneDNN): Winograd is used where it is at least ``WINOGRAD_MARGIN`` (5%) faster
than the direct kernel, and oneDNN where it is at least ``ONEDNN_MARGIN`` (10%) faster than
the best TVM kernel. The choice is per kernel (layers with the same shapes share one); the
report says which ran.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.target import Target

from . import onednn
from ..op import bf16, winograd
from ..op.fused_op import (LegoConvSpec, lego_conv2d_prim_func, lego_gather_prim_func,
                           lego_kernels, unpack_bank, winograd_unsupported)
from ..support.timing import best_of_rounds
from .kernel_timing import build_alone, fused_kernel_run, random_inputs
from ..support.targets import why_not_runnable_here
from ..support.tvm_compat import const_array

CHOICES = ("tvm", "winograd", "onednn", "auto")
ONEDNN_BLOCKS = (1, 4, 8, 16)      # Lego-map layouts oneDNN writes: NCHW and nChw{4,8,16}c


@dataclass
class KernelChoice:
    kernel: str                    # the fused PrimFunc (layers with equal shapes share one)
    backend: str                   # "tvm" (direct), "winograd" or "onednn"
    tvm_ms: float | None = None    # measured ("auto" only)
    onednn_ms: float | None = None
    # "; "-separated: why Winograd or oneDNN were not used ("not ..."), oneDNN's
    # implementation, why the whole model overruled oneDNN.
    note: str = ""
    winograd: int = 0              # r of F(r x r, 3x3) when the backend is "winograd"
    winograd_ms: dict = field(default_factory=dict)   # measured ("auto"): r -> ms

    def as_dict(self) -> dict:
        return asdict(self)


def onednn_unsupported(spec: LegoConvSpec) -> str | None:
    """Why the oneDNN path cannot compute this kernel's Lego maps (None if it can)."""
    if spec.dtype != "float32":
        return f"dtype {spec.dtype}"
    if spec.in_channels != spec.splits * spec.split_channels:
        return (f"the input has {spec.in_channels} channels, more than the "
                f"{spec.splits} x {spec.split_channels} the splits read")
    if spec.in_block != 1 or spec.out_block != 1:
        return "blocked (NCHW[x]c) input or output"
    if spec.bank_block not in ONEDNN_BLOCKS:
        return f"bank packed in blocks of {spec.bank_block}"
    return None


def choose(mod: tvm.IRModule, target: Target, mode: str, database=None,
           progress: Callable[[str], None] | None = None
           ) -> tuple[tvm.IRModule, list[KernelChoice]]:
    """Give each fused kernel of ``mod`` (fused, not yet lowered) its compute-once backend
    and rewrite the kernels that do not use TVM's direct conv. ``database``: tuning
    records, so "auto" times the TVM kernels as the model will run them."""
    if mode not in CHOICES:
        raise ValueError(f"compute_once={mode!r}: choose one of {', '.join(CHOICES)}")
    if mode == "tvm":
        return mod, []
    no_onednn = _why_not_onednn(target) if mode in ("onednn", "auto") else "not asked for"
    if no_onednn and mode == "onednn":
        raise onednn.OneDNNUnavailable(f"compute_once='onednn': {no_onednn}")
    no_winograd = _why_not_winograd(target, mode)
    if no_winograd and mode == "winograd":
        raise ValueError(f"compute_once='winograd': {no_winograd}")
    choices: list[KernelChoice] = []
    kernels = lego_kernels(mod)
    for number, (gvar, func, spec) in enumerate(kernels, 1):
        choice = KernelChoice(gvar.name_hint, "tvm")
        # oneDNN's NCHW maps ([N*o, m, H, W], block 1) are a flat_pixels kernel's maps.
        onednn_spec = replace(spec, flat_pixels=False)
        why_not_onednn = no_onednn or onednn_unsupported(onednn_spec)
        why_not_winograd = no_winograd or winograd_unsupported(spec)
        if mode == "winograd":
            if why_not_winograd:
                choice.note = f"not Winograd: {why_not_winograd}"
            else:
                choice.backend, choice.winograd = "winograd", default_winograd_tile(spec)
        elif mode == "onednn":
            if why_not_onednn:
                choice.note = f"not oneDNN: {why_not_onednn}"
            else:
                choice.backend, choice.note = "onednn", _implementation(onednn_spec)
        elif why_not_onednn and why_not_winograd:     # nothing to time: direct
            choice.note = f"not Winograd: {why_not_winograd}; not oneDNN: {why_not_onednn}"
        else:
            if progress:
                progress(f"compute-once backend: timing kernel {number}/{len(kernels)} "
                         f"({gvar.name_hint}) every way it can run")
            _time_every_way(choice, func, spec, onednn_spec, target, database,
                            why_not_onednn, why_not_winograd)
        choices.append(choice)
    return apply_choices(mod, choices), choices


def default_winograd_tile(spec: LegoConvSpec) -> int:
    """F(4x4, 3x3) from 16x16 outputs, else F(2x2, 3x3). Measured alone (2-core Xeon,
    AVX-512): F(4x4) faster at 16x16 and up (VGG's 128ch 16x16: 0.09 against 0.21 ms),
    F(2x2) at 14x14 and below (ResNet-50's 256ch 14x14: 0.29 against 0.41; VGG's 8x8:
    0.07 against 0.19), where 4x4 tiles are partly padding and the bank is 4x the direct."""
    return 4 if min(spec.out_height, spec.out_width) >= 16 else 2


def _why_not_winograd(target: Target, mode: str) -> str | None:
    if target.kind.name != "llvm":
        return f"the Winograd kernel has CPU schedules only; this target is {target.kind.name}"
    if mode == "auto" and why_not_runnable_here(target):
        return f"'auto' times kernels on this machine ({why_not_runnable_here(target)})"
    return None


def _time_every_way(choice: KernelChoice, func: tirx.PrimFunc, spec: LegoConvSpec,
                    onednn_spec: LegoConvSpec, target: Target, database, why_not_onednn: str | None,
                    why_not_winograd: str | None) -> None:
    """Fill in ``choice`` for "auto": time the direct kernel, Winograd and oneDNN where they
    apply (alternating rounds, best round each) and keep the fastest by the margins."""
    runs = [fused_kernel_run(func, spec, target, database)[0]]
    tiles = [] if why_not_winograd else list(winograd.TILES)
    for tile in tiles:
        wino = replace(spec, winograd=tile)
        runs.append(fused_kernel_run(lego_conv2d_prim_func(wino), wino, target, database)[0])
    if not why_not_onednn:
        runs.append(_onednn_run(onednn_spec, target))
    times = _time_kernels(runs)
    choice.tvm_ms = times[0]
    choice.winograd_ms = dict(zip(tiles, times[1:1 + len(tiles)]))
    choice.backend, choice.winograd, best_ms = _fastest_tvm_kernel(choice)
    if not choice.winograd_ms:
        choice.note = f"not Winograd: {why_not_winograd}"
    if why_not_onednn:
        choice.note = "; ".join(filter(None, [choice.note, f"not oneDNN: {why_not_onednn}"]))
        return
    choice.onednn_ms = times[-1]
    if choice.onednn_ms <= (1 - ONEDNN_MARGIN) * best_ms:
        choice.backend, choice.winograd = "onednn", 0
        choice.note = "; ".join(filter(None, [choice.note, _implementation(onednn_spec)]))


def _fastest_tvm_kernel(choice: KernelChoice) -> tuple[str, int, float]:
    """(backend, Winograd tile, ms) of the fastest TVM kernel of a choice timed by "auto":
    Winograd where it beat the direct kernel by ``WINOGRAD_MARGIN``, else the direct one."""
    if choice.winograd_ms:
        tile, ms = min(choice.winograd_ms.items(), key=lambda item: item[1])
        if ms < (1 - WINOGRAD_MARGIN) * choice.tvm_ms:
            return "winograd", tile, ms
    return "tvm", 0, choice.tvm_ms


def without_onednn(choice: KernelChoice) -> KernelChoice:
    """``choice`` with oneDNN replaced by the fastest TVM kernel ("auto" timed them all; a
    choice oneDNN was forced for falls back to the direct kernel)."""
    if choice.backend != "onednn":
        return choice
    if choice.tvm_ms is None:
        return replace(choice, backend="tvm", winograd=0)
    backend, tile, _ = _fastest_tvm_kernel(choice)
    return replace(choice, backend=backend, winograd=tile)


def overrule_onednn(choice: KernelChoice, on_tvm: KernelChoice, why: str) -> None:
    """Run ``choice``'s kernel as ``on_tvm`` (``without_onednn``) instead of on oneDNN, for
    ``why``; the reasons the note gave for not using the other ways stay."""
    reasons = [part for part in choice.note.split("; ") if part.startswith("not ")]
    choice.backend, choice.winograd = on_tvm.backend, on_tvm.winograd
    choice.note = "; ".join(reasons + [why])


def _time_kernels(runs: list) -> list[float]:
    """Milliseconds of each run (alternating rounds, best round each); a seam for tests."""
    return best_of_rounds(runs)


def winograd_everywhere(mod: tvm.IRModule, tile: int) -> tvm.IRModule:
    """``mod`` with every kernel Winograd can compute rewritten to F(tile x tile, 3x3)."""
    return apply_choices(mod, [KernelChoice(gvar.name_hint, "winograd", winograd=tile)
                               for gvar, _, spec in lego_kernels(mod)
                               if not winograd_unsupported(spec)])


def apply_choices(mod: tvm.IRModule, choices: list[KernelChoice]) -> tvm.IRModule:
    """Rewrite the kernels of ``mod`` whose choice is Winograd or oneDNN."""
    by_kernel = {c.kernel: c for c in choices}
    chosen = {}
    for gvar, _, spec in lego_kernels(mod):
        choice = by_kernel.get(gvar.name_hint)
        if choice is not None and choice.backend == "onednn":
            chosen[gvar] = (replace(spec, flat_pixels=False), "onednn")
        elif choice is not None and choice.backend == "winograd":
            chosen[gvar] = (replace(spec, winograd=choice.winograd), "winograd")
    return rewrite_kernels(mod, chosen)


def _why_not_onednn(target: Target) -> str | None:
    if target.kind.name != "llvm" or why_not_runnable_here(target):
        return ("the oneDNN backend runs on the build machine's own CPU only; this target is "
                f"{target.kind.name} ({why_not_runnable_here(target) or 'another CPU'})")
    return onednn.why_unavailable()


def weight_block(spec: LegoConvSpec) -> int:
    """The block of the bank's layout for oneDNN: that of its fast AVX2 (8) or AVX-512 (16)
    kernels, the bank's SIMD packing, where both channel counts divide; else 1 (plain)."""
    block = spec.bank_block
    fits = block in (8, 16) and spec.split_channels % block == 0
    return block if fits and spec.lego_filters % block == 0 else 1


def onednn_bank(bank: np.ndarray, block: int) -> np.ndarray:
    """``[m, b, kh, kw]`` -> oneDNN's ``OIhw<B>i<B>o``, ``[m/B, b/B, kh, kw, B(i), B(o)]``,
    done once here instead of on every call (block 1: unchanged)."""
    if block == 1:
        return bank
    m, b, kh, kw = bank.shape
    return np.ascontiguousarray(bank.reshape(m // block, block, b // block, block, kh, kw)
                                .transpose(0, 2, 4, 5, 3, 1))


def _implementation(spec: LegoConvSpec) -> str:
    """oneDNN's implementation for this shape, e.g. "jit:avx2"."""
    s = spec
    dims = [(s.batch or 1) * s.splits, s.split_channels, s.height, s.width, s.lego_filters,
            *s.kernel, s.out_height, s.out_width, *s.stride, *s.padding[:2], *s.padding[2:],
            weight_block(s)]
    return "oneDNN " + str(tvm.get_global_func("lego_tvm.onednn_implementation")(
        tvm.runtime.ShapeTuple(dims)))


def _params(spec: LegoConvSpec) -> list[int]:
    """What ``lego_tvm.onednn_conv2d`` takes besides the tensors (see onednn_ext/)."""
    return [spec.splits, *spec.stride, *spec.padding, spec.bank_block]


def _maps_shape(spec: LegoConvSpec, batch) -> tuple:
    s = spec
    return (batch, s.splits, s.lego_filters // s.bank_block, s.out_height, s.out_width,
            s.bank_block)


@mutator
class _RewriteKernels(PyExprMutator):
    """``call_tir(fused, x, bank, index, coef, bias[, residual])`` ->
    Winograd: ``call_tir(fused_winograd, x, transformed bank, ...)``;
    bf16: ``call_tir(fused_bf16, x, bf16 bank, ...)``, its input, residual and output bf16
    bits (uint16) where they are among ``bf16_tensors``;
    oneDNN: ``maps = call_dps_packed(onednn_conv2d, x, bank, params)`` then
    ``call_tir(gather_sum, maps, index, coef, bias[, residual])``."""

    def __init__(self, mod: tvm.IRModule, chosen: dict, bf16_tensors: list):
        super().__init__(mod)
        self.chosen = chosen
        self.bf16_tensors = bf16_tensors
        self.call_tir = tvm.ir.Op.get("relax.call_tir")

    def _stored_bf16(self, expr) -> bool:
        return any(expr.same_as(var) for var in self.bf16_tensors)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        call = binding.value
        spec, backend = (self.chosen.get(call.args[0], (None, None))
                         if isinstance(call, relax.Call) and call.op.same_as(self.call_tir)
                         else (None, None))
        if spec is None:
            super().visit_var_binding_(binding)
            return
        old_args = list(call.args[1].fields)
        x, bank, *rest = [self.visit_expr(a) for a in old_args]
        packed = const_array(bank)
        bank = unpack_bank(packed, packed.shape[-1])   # the direct kernel's [m/B, b, kh, kw, B]
        out_ty = binding.var.ty
        if backend == "bf16":
            spec = replace(spec, bf16_input=self._stored_bf16(old_args[0]),
                           bf16_residual=spec.has_residual and self._stored_bf16(old_args[-1]),
                           bf16_output=self._stored_bf16(binding.var))
            if spec.bf16_output:
                out_ty = relax.TensorType(out_ty.shape, bf16.STORAGE)
        if backend in ("winograd", "bf16"):
            suffix = f"winograd{spec.winograd}" if backend == "winograd" else "bf16"
            kernel = self.builder_.add_func(lego_conv2d_prim_func(spec),
                                            f"{call.args[0].name_hint}_{suffix}")
            bank = (winograd.transform_bank(bank, spec.winograd, spec.bank_block)
                    if backend == "winograd" else bf16.kernel_bank(bank, spec))
            new = relax.call_tir(kernel, [x, relax.const(bank), *rest], out_ty=out_ty)
        else:
            weights = onednn_bank(bank, weight_block(spec))
            batch = binding.var.ty.shape[0]
            maps = self.builder_.emit(relax.call_dps_packed(
                onednn.FUNCTION, [x, relax.const(weights), relax.ShapeExpr(_params(spec))],
                out_ty=relax.TensorType(_maps_shape(spec, batch), spec.dtype)), "lego_maps")
            gather = self.builder_.add_func(lego_gather_prim_func(spec), "lego_gather_sum")
            new = relax.call_tir(gather, [maps, *rest], out_ty=binding.var.ty)
        if out_ty.same_as(binding.var.ty):
            self.builder_.emit_normalized(relax.VarBinding(binding.var,
                                                           self.builder_.normalize(new)))
            return
        # A bf16 output: a new variable of its dtype, read in place of the old one.
        emit = (self.builder_.emit if isinstance(binding.var, relax.DataflowVar)
                else self.builder_.emit_output)
        self.set_var_remap(binding.var, emit(new, binding.var.name))


def rewrite_kernels(mod: tvm.IRModule, chosen: dict, bf16_tensors: list = ()) -> tvm.IRModule:
    """``mod`` with the kernels of ``chosen`` (``{global_var: (new spec, "winograd" |
    "onednn" | "bf16")}``) rewritten (``_RewriteKernels``); the tensors of ``bf16_tensors``
    (bound vars of bf16 kernel calls, ``precision.bf16_tensors``) stored in bf16."""
    if not chosen:
        return mod
    rewriter = _RewriteKernels(mod, chosen, list(bf16_tensors))
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    mod = rewriter.builder_.get()
    for gvar in chosen:      # the fused kernels replaced everywhere
        if not _referenced(mod, gvar):
            del mod[gvar]
    return mod


def _referenced(mod: tvm.IRModule, gvar) -> bool:
    found = []
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, lambda e: found.append(e.same_as(gvar)))
    return any(found)


# oneDNN must win by ONEDNN_MARGIN: in a whole model, the hand-off between its OpenMP threads
# and TVM's pool costs more than the kernel alone shows (measured: single layers 0.02-0.4 ms
# slower on oneDNN in the model than alone).
ONEDNN_MARGIN = 0.1
# Winograd must win by WINOGRAD_MARGIN: it rounds more than the direct conv (docs/winograd.md).
WINOGRAD_MARGIN = 0.05


def _onednn_run(spec: LegoConvSpec, target: Target):
    a = random_inputs(spec, np.random.default_rng(0))
    a["bank"] = onednn_bank(a["bank"], weight_block(spec))
    gather = build_alone(lego_gather_prim_func(spec), target)[0]["main"]
    conv = tvm.get_global_func(onednn.FUNCTION)
    t = {k: tvm.runtime.tensor(v) for k, v in a.items()}
    maps = tvm.runtime.tensor(np.zeros(_maps_shape(spec, spec.batch or 1), np.float32))
    params = tvm.runtime.ShapeTuple(_params(spec))
    rest = [t[k] for k in ("index", "coef", "bias", "residual", "out") if k in t]

    def run():
        conv(t["x"], t["bank"], params, maps)
        gather(maps, *rest)
    return run


def time_models(executables: list, example_inputs) -> list[float]:
    """Median milliseconds of each VM executable on random inputs shaped like
    ``example_inputs`` (torch tensors), in alternating rounds, best round each."""
    rng = np.random.default_rng(0)
    arrays = [tvm.runtime.tensor(rng.standard_normal(tuple(t.shape)).astype(np.float32))
              for t in example_inputs]
    runs = []
    for executable in executables:
        main = relax.VirtualMachine(executable, tvm.cpu())["main"]
        runs.append(lambda main=main: main(*arrays))
    return best_of_rounds(runs)
