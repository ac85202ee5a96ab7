"""Which library computes each fused kernel's Lego feature maps.

``"tvm"`` (the default): TVM's generated kernel does the whole layer. ``"onednn"``: oneDNN
computes the ``o*m`` maps (the splits folded into the batch, one convolution with the bank;
see ``onednn.py``) and a TVM kernel does the gather-sum and its epilogue. ``"auto"``: each
fused kernel is built and timed both ways, here and now, and oneDNN is used where it is at
least ``ONEDNN_MARGIN`` (10%) faster. The choice is per kernel (layers with the same shapes share one); the report says which ran.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.target import Target

from . import onednn
from ..op.fused_op import LegoConvSpec, lego_gather_prim_func, lego_kernels, unpack_bank
from ..support.timing import best_of_rounds
from .kernel_timing import build_alone, fused_kernel_run, random_inputs
from ..support.targets import why_not_runnable_here
from ..support.tvm_compat import const_array

CHOICES = ("tvm", "onednn", "auto")
ONEDNN_BLOCKS = (1, 4, 8, 16)      # Lego-map layouts oneDNN writes: NCHW and nChw{4,8,16}c


@dataclass
class KernelChoice:
    kernel: str                    # the fused PrimFunc (layers with equal shapes share one)
    backend: str                   # "tvm" or "onednn"
    tvm_ms: float | None = None    # measured ("auto" only)
    onednn_ms: float | None = None
    note: str = ""                 # why oneDNN was not used, or its implementation

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
    and rewrite the oneDNN ones. ``database``: tuning records, so "auto" times the TVM kernel
    as the model will run it."""
    if mode not in CHOICES:
        raise ValueError(f"compute_once={mode!r}: choose one of {', '.join(CHOICES)}")
    if mode == "tvm":
        return mod, []
    unavailable = _why_not_onednn(target)
    if unavailable and mode == "onednn":
        raise onednn.OneDNNUnavailable(f"compute_once='onednn': {unavailable}")
    choices: list[KernelChoice] = []
    chosen: dict[tvm.ir.GlobalVar, LegoConvSpec] = {}
    kernels = lego_kernels(mod)
    for number, (gvar, func, spec) in enumerate(kernels, 1):
        # oneDNN's NCHW maps ([N*o, m, H, W], block 1) are a flat_pixels kernel's maps.
        spec = replace(spec, flat_pixels=False)
        reason = unavailable or onednn_unsupported(spec)
        if reason:
            choices.append(KernelChoice(gvar.name_hint, "tvm", note=f"not oneDNN: {reason}"))
            continue
        choice = KernelChoice(gvar.name_hint, "onednn", note=_implementation(spec))
        if mode == "auto":
            if progress:
                progress(f"compute-once backend: timing kernel {number}/{len(kernels)} "
                         f"({gvar.name_hint}) on TVM and on oneDNN")
            choice.tvm_ms, choice.onednn_ms = _time_both(func, spec, target, database)
            if choice.onednn_ms > (1 - ONEDNN_MARGIN) * choice.tvm_ms:
                choice.backend = "tvm"
        if choice.backend == "onednn":
            chosen[gvar] = spec
        choices.append(choice)
    if chosen:
        mod = _rewrite(mod, chosen)
    return mod, choices


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
class _UseOneDNN(PyExprMutator):
    """``call_tir(fused, x, bank, index, coef, bias[, residual])`` ->
    ``maps = call_dps_packed(onednn_conv2d, x, bank, params)`` then
    ``call_tir(gather_sum, maps, index, coef, bias[, residual])``."""

    def __init__(self, mod: tvm.IRModule, chosen: dict):
        super().__init__(mod)
        self.chosen = chosen
        self.call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        call = binding.value
        spec = (self.chosen.get(call.args[0]) if isinstance(call, relax.Call)
                and call.op.same_as(self.call_tir) else None)
        if spec is None:
            super().visit_var_binding_(binding)
            return
        x, bank, *rest = [self.visit_expr(a) for a in call.args[1].fields]
        weights = onednn_bank(unpack_bank(const_array(bank), spec.bank_block),
                              weight_block(spec))
        batch = binding.var.ty.shape[0]
        maps = self.builder_.emit(relax.call_dps_packed(
            onednn.FUNCTION, [x, relax.const(weights), relax.ShapeExpr(_params(spec))],
            out_ty=relax.TensorType(_maps_shape(spec, batch), spec.dtype)), "lego_maps")
        gather = self.builder_.add_func(lego_gather_prim_func(spec), "lego_gather_sum")
        new = self.builder_.normalize(relax.call_tir(gather, [maps, *rest], out_ty=binding.var.ty))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, new))


def _rewrite(mod: tvm.IRModule, chosen: dict) -> tvm.IRModule:
    rewriter = _UseOneDNN(mod, chosen)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    mod = rewriter.builder_.get()
    for gvar in chosen:      # the fused kernels oneDNN replaced everywhere
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


def _time_both(func: tirx.PrimFunc, spec: LegoConvSpec, target: Target, database
               ) -> tuple[float, float]:
    """Milliseconds of the TVM kernel and of oneDNN + the gather-sum kernel."""
    tvm_run, _ = fused_kernel_run(func, spec, target, database)
    best = best_of_rounds([tvm_run, _onednn_run(spec, target)])
    return best[0], best[1]


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
