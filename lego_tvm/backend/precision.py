"""``precision="bf16"``: each fused kernel rewritten to store its input and bank in bf16 and
sum in fp32, its Lego maps fp32 (``op/bf16.py``), on CPUs with AVX512_BF16 (and AMX).

A matmul with constant weights (a classifier) reads them in bf16 (``bf16_weights.py``).
Every fused kernel that can runs in bf16; one that cannot (a Lego filter count that is not a
multiple of 16) stays fp32, and so does a conv reading fewer than ``FP32_BELOW_CHANNELS``
channels per split: the model's first conv, on the image. The report says which and why.
A 1x1 layer keeps its maps pixels innermost (``schedules/lego_cpu_flat.py``; on AMX
``schedules/x86_amx_flat.py``), and so does a large kxk one on AMX.
A tensor that a bf16 kernel writes and only bf16 kernels read (as their input or residual)
is stored in bf16 (``bf16_tensors``); the others (into pooling, an fp32 kernel, the model's
output) stay float32, and so do the model's inputs. bf16 is
refused, never emulated: on a target without AVX512_BF16 (``BF16Unavailable``), and when a
model built for one is loaded or called on a CPU without it
(``support.targets.why_not_runnable_here``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import tvm
from tvm import relax
from tvm.target import Target, codegen

from .bf16_weights import MATMUL_NAME, with_bf16_weights
from ..op.bf16 import flat_unsupported
from ..op.fused_op import bf16_unsupported, lego_kernels
from ..schedules.simd import simd_profile
from ..schedules.x86_amx import amx_unsupported
from ..schedules.lego_cpu_flat import dpbf16ps_flat_unsupported
from ..schedules.x86_amx_flat import amx_flat_unsupported
from ..schedules.x86_bf16 import LANES
from ..support.targets import (AMX_FEATURES, BF16_FEATURE, host_has_amx_bf16, host_has_bf16,
                               target_arch)

PRECISIONS = ("fp32", "bf16")
# A conv on fewer channels (the first conv, on an RGB image) stays fp32: rounding the image to
# bf16 cost the most accuracy of any layer (measured with 16 random inputs, max error / max
# output against PyTorch fp32: lego_vgg16 3.1e-2 with it in bf16, 2.4e-2 without; lego_resnet50
# 2.6e-2 and 2.5e-2; OpenVINO's bf16 on the same inputs 2.6e-2 and 3.5e-2), and it is a small
# share of the work (1% of lego_vgg16's MACs, 5% of lego_resnet50's). Tried and dropped
# (2026-12-01, 2-core Xeon with AMX): the stem as an AMX kernel on its im2col matrix, the image
# exact in two bf16 parts (hi + lo), the weights rounded. Alone it ran 0.79 -> 0.63 ms, but the
# whole lego_resnet50 only 9.24 -> 9.13 ms and lego_vgg16 1.45 -> 1.47 ms (side by side, default
# schedules for it), while its rounded weights moved the error from 2.2e-2 to 2.3e-2 and from
# 2.5e-2 to 2.9e-2, above OpenVINO's 2.6e-2.
FP32_BELOW_CHANNELS = 8


# A kxk layer's maps go pixels innermost (lego_cpu_flat) from this many output pixels;
# smaller maps keep pixels as the tile rows (x86_amx) or filters as the lanes (vdpbf16ps).
# Measured alone, default schedules, flat against not: on AMX (2-core Xeon, 2026-12-01)
# 64->64 at 56x56 0.13 against 0.20 ms, 128->128 at 28x28 0.11 against 0.12, 64->64 at 32x32
# 0.045 against 0.068; 256->256 at 14x14 0.125 against 0.116, 128->128 at 16x16 0.068
# against 0.047. On vdpbf16ps (2-core AMD EPYC Zen 4, 2026-12-01, best of 5 alternating
# rounds) 0.386 against 0.446, 0.327 against 0.350, 0.126 against 0.199; 0.384 against
# 0.335, 0.097 against 0.097.
FLAT_TAPS_MIN_PIXELS = 28 * 28

# The unit of a matmul whose constant weights are stored in bf16 (``bf16_weights.py``).
WEIGHTS_ONLY = "weights only (bf16 weights, fp32 inputs and sums)"
# The arguments of a fused kernel call: x, bank, index, coef, bias[, residual].
BF16_RESIDUAL_ARG = 5


# A 1x1 layer's flat maps on vdpbf16ps are whole vectors of 16 pixels: they are padded up to
# that where this adds at most an eighth. Measured alone (2-core AMD EPYC Zen 4, 2026-12-01,
# best of 5 alternating rounds), filters as the lanes against flat maps of a layer 16/14 or
# 8/7 times as wide: 256->1024 at 14x14 0.335 ms against 0.216 at 16x16; 512->2048 at 7x7 0.21
# against 0.229 at 8x8 (7x7 would pad 49 pixels to 64).
MAX_FLAT_PAD = 1 / 8


def _pad_pays(spec) -> bool:
    """Whether a 1x1 layer's output pixels are not whole vectors and padding them pays."""
    pixels = spec.out_height * spec.out_width
    return pixels % LANES != 0 and -(-pixels // LANES) * LANES <= pixels * (1 + MAX_FLAT_PAD)


class BF16Unavailable(ValueError):
    """bf16 was asked for a target (or machine) whose CPU has no AVX512_BF16."""


@dataclass
class KernelPrecision:
    kernel: str            # the fused PrimFunc, as the model runs it
    precision: str         # "bf16" or "fp32"
    reason: str = ""       # why a kernel stayed fp32
    # What computes a bf16 kernel's Lego maps: "AMX" (tdpbf16ps tiles) or "AVX512_BF16"
    # (vdpbf16ps), with why not AMX when the target has it.
    unit: str = ""
    calls: int = 0          # calls of a bf16 kernel in the model ...
    bf16_outputs: int = 0   # ... and how many of them store their output in bf16

    def as_dict(self) -> dict:
        return asdict(self)


def why_no_bf16(target: Target) -> str | None:
    """Why ``target`` cannot run the bf16 kernels (None if it can)."""
    if target.kind.name != "llvm" or target_arch(target) != "x86_64":
        return (f"bf16 kernels are for x86-64 CPUs with AVX512_BF16; this target is "
                f"{target.kind.name} for {target_arch(target)}")
    if not codegen.target_has_features(BF16_FEATURE, target):
        mcpu = str(target.attrs.get("mcpu", "") or "generic")
        return (f"the target CPU ({mcpu}) lacks AVX512_BF16 ({BF16_FEATURE}); bf16 needs e.g. "
                "AMD Zen 4, Intel Cooper Lake, Sapphire Rapids or later (preset 'x86-zen4' or "
                "'x86-sapphirerapids')")
    return None


def with_host_bf16(target: Target) -> Target:
    """The host target with AVX512_BF16, and AMX's bf16 tiles, enabled where this CPU has
    them and LLVM's model of the CPU does not (a virtual machine may report an older model:
    these Xeons say Rocket Lake). With AMX, bf16 kernels compute their maps on it
    (``schedules/x86_amx.py``)."""
    if target.kind.name != "llvm":
        return target
    wanted = []
    if host_has_bf16() and not codegen.target_has_features(BF16_FEATURE, target):
        wanted.append(BF16_FEATURE)
    if host_has_amx_bf16():
        wanted += [f for f in AMX_FEATURES if not codegen.target_has_features(f, target)]
    if not wanted:
        return target
    config = {k: v for k, v in target.export().items()
              if k not in ("id", "tag", "feature", "features")}
    config["mattr"] = [*config.get("mattr", []), *(f"+{f}" for f in wanted)]
    return Target(config)


def bf16_target(requested, resolved: Target) -> Target:
    """The target bf16 kernels are built for: ``resolved`` (from ``requested``, the target
    the user gave), with the host's AVX512_BF16 and AMX enabled when ``requested`` is the
    host (``with_host_bf16``). Raises ``BF16Unavailable`` if it has no AVX512_BF16."""
    target = with_host_bf16(resolved) if requested in (None, "host") else resolved
    _require_bf16(target)
    return target


def _require_bf16(target: Target) -> None:
    reason = why_no_bf16(target)
    if reason:
        raise BF16Unavailable(f"precision='bf16': {reason}")


def to_bf16(mod: tvm.IRModule, target: Target) -> tuple[tvm.IRModule, list[KernelPrecision]]:
    """Every fused kernel of ``mod`` that can run in bf16 rewritten to; the precision of each
    kernel, with the reason for those left fp32. Raises ``BF16Unavailable`` for a target
    without AVX512_BF16."""
    from .compute_once import rewrite_kernels

    _require_bf16(target)
    amx = simd_profile(target).amx_bf16
    chosen, kernels = {}, []
    for gvar, _, spec in lego_kernels(mod):
        why_not = bf16_unsupported(spec, LANES) or (
            f"{spec.split_channels} input channels: kept fp32 for accuracy"
            if spec.split_channels < FP32_BELOW_CHANNELS else None)
        if why_not:
            kernels.append(KernelPrecision(gvar.name_hint, "fp32", why_not))
            continue
        new = replace(spec, bf16=True, bank_block=LANES, flat_pixels=False)
        flat = replace(new, bank_block=1, flat_pixels=True)    # maps pixels innermost
        if not amx and spec.kernel == (1, 1) and _pad_pays(spec):
            flat = replace(flat, flat_pad_to=LANES)
        unit_unsupported = amx_flat_unsupported if amx else dpbf16ps_flat_unsupported
        if flat_unsupported(flat) is None and unit_unsupported(flat) is None and (
                spec.kernel == (1, 1)
                or spec.out_height * spec.out_width >= FLAT_TAPS_MIN_PIXELS):
            new = flat
        chosen[gvar] = (new, "bf16")
        no_amx = amx_unsupported(new) if amx and not new.flat_pixels else None
        unit = "AMX" if amx and not no_amx else "AVX512_BF16" + (
            f" (not AMX: {no_amx})" if no_amx else "")
        kernels.append(KernelPrecision(f"{gvar.name_hint}_bf16", "bf16", unit=unit))
    stored_bf16 = bf16_tensors(mod, chosen)
    for var, kernel in _kernel_calls(mod, chosen):
        precision = next(k for k in kernels if k.kernel == f"{kernel.name_hint}_bf16")
        precision.calls += 1
        precision.bf16_outputs += _among(var, stored_bf16)
    mod, matmuls = with_bf16_weights(rewrite_kernels(mod, chosen, stored_bf16))
    kernels += [KernelPrecision(MATMUL_NAME, "bf16", unit=WEIGHTS_ONLY, calls=matmuls)
                ] if matmuls else []
    return mod, kernels


def bf16_tensors(mod: tvm.IRModule, chosen: dict) -> list[relax.Var]:
    """The tensors of ``mod`` to store in bf16: those a bf16 kernel of ``chosen`` (``{global
    var: (spec, "bf16")}``) writes and that only bf16 kernels read, as input or residual."""
    calls = _kernel_calls(mod, chosen)
    read_as_bf16, read_otherwise = [], []
    for func in mod.functions.values():
        if not isinstance(func, relax.Function):
            continue
        for block in func.body.blocks:
            for binding in block.bindings:
                value = binding.value
                spec = _chosen_spec(value, chosen)
                if spec is None:
                    read_otherwise += _vars_in(value)
                    continue
                fields = list(value.args[1].fields)
                as_bf16 = [0] + ([BF16_RESIDUAL_ARG] if spec.has_residual else [])
                read_as_bf16 += [fields[i] for i in as_bf16]
                read_otherwise += [v for i, f in enumerate(fields) if i not in as_bf16
                                   for v in _vars_in(f)]
                read_otherwise += [v for a in value.args[2:] for v in _vars_in(a)]
        read_otherwise += _vars_in(func.body.body)
    return [var for var, _ in calls
            if _among(var, read_as_bf16) and not _among(var, read_otherwise)]


def _chosen_spec(value, chosen: dict):
    call_tir = tvm.ir.Op.get("relax.call_tir")
    if isinstance(value, relax.Call) and value.op.same_as(call_tir) and value.args[0] in chosen:
        return chosen[value.args[0]][0]
    return None


def _kernel_calls(mod: tvm.IRModule, chosen: dict) -> list[tuple]:
    """``(bound var, kernel)`` for each call of a kernel of ``chosen`` in ``mod``."""
    return [(binding.var, binding.value.args[0])
            for func in mod.functions.values() if isinstance(func, relax.Function)
            for block in func.body.blocks for binding in block.bindings
            if _chosen_spec(binding.value, chosen) is not None]


def _vars_in(expr) -> list:
    found = []
    relax.analysis.post_order_visit(
        expr, lambda e: found.append(e) if isinstance(e, relax.Var) else None)
    return found


def _among(var, variables: list) -> bool:
    return any(var.same_as(v) for v in variables)
