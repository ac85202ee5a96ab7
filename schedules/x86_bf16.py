"""``vdpbf16ps`` (AVX512_BF16) as TVM tensor intrinsics: 16 fp32 sums += 2 bf16 x 16x2 bf16.

``acc[i] += a[0] * b[i, 0] + a[1] * b[i, 1]`` for i < 16: one instruction does a 2-channel
dot product for 16 filters, with ``a`` (a pixel's pair of channels) broadcast. With the
maps pixels innermost (``INTRIN_PIXELS``) the lanes are 16 pixels instead, each a pair of
channels in one uint32 (``op/bf16.PAIR_STORAGE``), and a filter's pair is broadcast. The operands
are bf16 bit patterns in ``uint16`` buffers (``op/bf16.py`` says why), so the instruction is
reached through a small LLVM IR function that reinterprets them as ``<32 x bfloat>``;
``pragma_import_llvm`` links it into the kernel's module, where LLVM inlines it.
"""
from __future__ import annotations

from tvm import s_tir
from tvm.script import tirx as T

from ..op.bf16 import PAIR_STORAGE, STORAGE, high_half, low_half

INTRIN = "lego_tvm.dpbf16ps_16x2"
INTRIN_PIXELS = "lego_tvm.dpbf16ps_16_pixels"
LANES = 16
_FUNCTION = "lego_tvm_dpbf16ps"
_SUMS, _REGISTERS = "float32", "local"     # the accumulators: fp32, in registers
LLVM_IR = f"""
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
define <16 x float> @{_FUNCTION}(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b) {{
  %a16 = bitcast <16 x i32> %a to <32 x bfloat>
  %b16 = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %a16, <32 x bfloat> %b16)
  ret <16 x float> %r
}}
"""


def _widen(bits):
    return T.reinterpret(T.shift_left(T.cast(bits, "uint32"), T.uint32(16)), dtype="float32")


@T.prim_func(s_tir=True)
def _desc(a: T.Buffer((2,), STORAGE, offset_factor=1),
          b: T.Buffer((LANES, 2), STORAGE, offset_factor=1),
          acc: T.Buffer((LANES,), _SUMS, offset_factor=1, scope=_REGISTERS)) -> None:
    with T.sblock("root"):
        T.reads(acc[0:LANES], a[0:2], b[0:LANES, 0:2])
        T.writes(acc[0:LANES])
        for i in T.serial(0, LANES):
            for k in T.serial(0, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    acc[vi] = acc[vi] + _widen(a[vk]) * _widen(b[vi, vk])


@T.prim_func(s_tir=True)
def _impl(a: T.Buffer((2,), STORAGE, offset_factor=1),
          b: T.Buffer((LANES, 2), STORAGE, offset_factor=1),
          acc: T.Buffer((LANES,), _SUMS, offset_factor=1, scope=_REGISTERS)) -> None:
    with T.sblock("root"):
        T.reads(acc[0:LANES], a[0:2], b[0:LANES, 0:2])
        T.writes(acc[0:LANES])
        pair = T.reinterpret(a.vload([0], "uint16x2"), dtype="int32")
        acc[T.ramp(T.int32(0), 1, LANES)] = T.call_pure_extern(
            "float32x16", _FUNCTION, acc.vload([0], "float32x16"), T.broadcast(pair, LANES),
            T.reinterpret(b.vload([0, 0], "uint16x32"), dtype="int32x16"))


s_tir.TensorIntrin.register(INTRIN, _desc, _impl, override=True)


# The flat maps' update as ``op/bf16.lego_maps_flat`` writes it, with its helpers (the input,
# b, read first): tensorize matches the expression as written.
@T.prim_func(s_tir=True)
def _pixels_desc(a: T.Buffer((1,), PAIR_STORAGE, offset_factor=1),
                 b: T.Buffer((LANES,), PAIR_STORAGE, offset_factor=1),
                 acc: T.Buffer((LANES,), _SUMS, offset_factor=1, scope=_REGISTERS)) -> None:
    with T.sblock("root"):
        T.reads(acc[0:LANES], b[0:LANES], a[0:1])
        T.writes(acc[0:LANES])
        for i in T.serial(0, LANES):
            with T.sblock("update"):
                vi = T.axis.remap("S", [i])
                acc[vi] = acc[vi] + (low_half(b[vi]) * low_half(a[0])
                                      + high_half(b[vi]) * high_half(a[0]))


@T.prim_func(s_tir=True)
def _pixels_impl(a: T.Buffer((1,), PAIR_STORAGE, offset_factor=1),
                 b: T.Buffer((LANES,), PAIR_STORAGE, offset_factor=1),
                 acc: T.Buffer((LANES,), _SUMS, offset_factor=1, scope=_REGISTERS)) -> None:
    with T.sblock("root"):
        T.reads(acc[0:LANES], b[0:LANES], a[0:1])
        T.writes(acc[0:LANES])
        acc[T.ramp(T.int32(0), 1, LANES)] = T.call_pure_extern(
            "float32x16", _FUNCTION, acc.vload([0], "float32x16"),
            T.reinterpret(b.vload([0], "uint32x16"), dtype="int32x16"),
            T.broadcast(T.reinterpret(a[0], dtype="int32"), LANES))


s_tir.TensorIntrin.register(INTRIN_PIXELS, _pixels_desc, _pixels_impl, override=True)


def tensorize_dot(sch: s_tir.Schedule, lanes_loop, outer_loop, intrinsic: str = INTRIN
                  ) -> None:
    """Run the loop nest ``lanes_loop`` (16 filters x a pair of channels, or 16 pixels with
    ``INTRIN_PIXELS``) as one ``vdpbf16ps``; ``outer_loop`` (any loop above it) carries the
    LLVM IR to link."""
    sch.tensorize(lanes_loop, intrinsic)
    sch.annotate(outer_loop, "pragma_import_llvm", LLVM_IR)
