"""The bf16 compute-once stage on AMX (Intel Sapphire Rapids and later): one ``tdpbf16ps``
multiplies a tile of up to 16 pixels x 32 channels by 32 channels x 16 Lego filters.

Measured on a 2-core Xeon with AMX (2026-11-30): the peak loop of ``tdpbf16ps``
(``bench/peak.py``) ran at 7063 GFLOP/s on 2 threads, against 227 for ``vdpbf16ps`` and 457
for fp32 FMAs; the layer benchmark's compute-once stages at 8-20% of it (600-1400 GFLOP/s,
benchmarks/2026-11-30-intel-xeon-amx-2t-bf16.md): one accumulator tile per call, its C
tile loaded and stored around each reduction, rows of at most 14 pixels.

The kernel is the bf16 kernel of ``op/bf16.py`` with 32 channels innermost in the packed
input (a split's channels a multiple of 32). Its maps ``[batch, o, m/16, H, W, 16]`` are
computed in tiles of M pixels of one row (M: the largest divisor of the width up to 16) x 16
filters, each by one call of a micro-kernel that runs the whole reduction (channel blocks x
kernel taps) on one accumulator tile: A = the M pixels' 32 channels at that tap (rows
``stride * 64`` bytes apart in the packed input), B = 16 channel pairs x 16 filters of the
bank (``[m/16, b/2, kh, kw, 16, 2]``: rows ``kh * kw * 64`` bytes apart). The micro-kernel
is LLVM IR (AMX's tile registers have no TIR form), reached by tensorizing the maps' loop nest
with an intrinsic made for the layer's shape.

Linux lets a process use AMX's tile data only once it asks (``arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)``); without it the first tile instruction kills the process (SIGILL).
The micro-kernel asks on its first call in each process, so the library runs anywhere it is
loaded, tuning's measurement processes included.
"""
from __future__ import annotations

import re

import tvm
from tvm import s_tir
from tvm.script import tirx as T

from ..op.bf16 import STORAGE, channel_block

LANES = 16          # filters per tile: 16 fp32 per 64-byte row
CHANNELS = 32       # channels per tile: 32 bf16 per 64-byte row
MAX_PIXELS = 16     # rows of a tile
_FUNCTION = "lego_tvm_amx_tile"
_SUMS = "float32"
# arch_prctl (syscall 158 on x86-64), ARCH_REQ_XCOMP_PERM (0x1023), XFEATURE_XTILEDATA (18):
# a micro-kernel's entry block asks once per process (REQUEST_AMX_CALL), then goes on at
# the label ``start``.
REQUEST_AMX_IR = """
@lego_tvm_amx_ready = internal global i32 0
declare i64 @syscall(i64, ...)
declare x86_amx @llvm.x86.tileloadd64.internal(i16, i16, ptr, i64)
declare x86_amx @llvm.x86.tilezero.internal(i16, i16)
declare x86_amx @llvm.x86.tdpbf16ps.internal(i16, i16, i16, x86_amx, x86_amx, x86_amx)
declare void @llvm.x86.tilestored64.internal(i16, i16, ptr, i64, x86_amx)
"""
REQUEST_AMX_CALL = """  %ready = load i32, ptr @lego_tvm_amx_ready, align 4
  %asked = icmp ne i32 %ready, 0
  br i1 %asked, label %start, label %ask
ask:
  %granted = call i64 (i64, ...) @syscall(i64 158, i64 4131, i64 18)
  store i32 1, ptr @lego_tvm_amx_ready, align 4
  br label %start
start:"""
LLVM_IR = REQUEST_AMX_IR + f"""
define void @{_FUNCTION}(ptr %c, ptr %a, ptr %b, i16 %m, i32 %steps, i32 %taps, i32 %kw,
                         i64 %a_block, i64 %a_row, i64 %a_pixel) {{
entry:
{REQUEST_AMX_CALL}
  %taps64 = zext i32 %taps to i64
  %b_pair = shl i64 %taps64, 6
  %b_block = shl i64 %b_pair, 4
  %c0 = call x86_amx @llvm.x86.tileloadd64.internal(i16 %m, i16 64, ptr %c, i64 64)
  br label %loop
loop:
  %t = phi i32 [0, %start], [%next, %loop]
  %acc = phi x86_amx [%c0, %start], [%acc1, %loop]
  %block = udiv i32 %t, %taps
  %tap = urem i32 %t, %taps
  %ry = udiv i32 %tap, %kw
  %rx = urem i32 %tap, %kw
  %block64 = zext i32 %block to i64
  %ry64 = zext i32 %ry to i64
  %rx64 = zext i32 %rx to i64
  %tap64 = zext i32 %tap to i64
  %oa1 = mul i64 %block64, %a_block
  %oa2 = mul i64 %ry64, %a_row
  %oa3 = shl i64 %rx64, 6
  %oa12 = add i64 %oa1, %oa2
  %oa = add i64 %oa12, %oa3
  %pa = getelementptr i8, ptr %a, i64 %oa
  %ob1 = mul i64 %block64, %b_block
  %ob2 = shl i64 %tap64, 6
  %ob = add i64 %ob1, %ob2
  %pb = getelementptr i8, ptr %b, i64 %ob
  %ta = call x86_amx @llvm.x86.tileloadd64.internal(i16 %m, i16 64, ptr %pa, i64 %a_pixel)
  %tb = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, ptr %pb, i64 %b_pair)
  %acc1 = call x86_amx @llvm.x86.tdpbf16ps.internal(i16 %m, i16 64, i16 64, x86_amx %acc, x86_amx %ta, x86_amx %tb)
  %next = add i32 %t, 1
  %done = icmp eq i32 %next, %steps
  br i1 %done, label %exit, label %loop
exit:
  call void @llvm.x86.tilestored64.internal(i16 %m, i16 64, ptr %c, i64 64, x86_amx %acc1)
  ret void
}}
"""


def amx_unsupported(spec) -> str | None:
    """Why the bf16 kernel of ``spec`` cannot compute its maps on AMX (None if it can)."""
    if channel_block(spec.split_channels) != CHANNELS:
        return f"{spec.split_channels} channels per split, not a multiple of {CHANNELS}"
    if spec.bank_block != LANES:
        return f"bank packed in blocks of {spec.bank_block}, not {LANES}"
    if pixels_per_tile(spec.out_width) < 2:
        return f"output width {spec.out_width}: no tile of 2 or more pixels divides it"
    return None


def pixels_per_tile(pixels: int) -> int:
    """The largest divisor of ``pixels`` up to 16: M, the pixels of a tile of the output
    width here (a tile never crosses a row)."""
    return max(d for d in range(1, MAX_PIXELS + 1) if pixels % d == 0)


def _description(pixels: int, blocks: int, kernel: tuple[int, int], stride: int):
    """The intrinsic's description: the maps' loop nest as TVM leaves it in the kernel, which
    drops the reduction loops of extent 1 (one channel block, a 1x1 kernel): the text is
    written for the shape, without them, and parsed."""
    kh, kw = kernel
    span = (pixels - 1) * stride + kw
    loops = [("w", pixels, "S"), ("ki", LANES, "S"), ("cb", blocks, "R"), ("ry", kh, "R"),
             ("rx", kw, "R"), ("rci", CHANNELS // 2, "R"), ("pair", 2, "R")]
    kept = [(name, extent, kind) for name, extent, kind in loops if extent > 1]
    var = {name: (f"v{name}" if extent > 1 else "T.int64(0)") for name, extent, _ in loops}

    def i64(n) -> str:
        return f"T.int64({n})"

    def widen(access: str) -> str:
        return f'T.reinterpret("float32", T.shift_left(T.Cast("uint32", {access}), T.uint32(16)))'
    a = (f"A[{var['cb']}, {var['ry']}, {var['w']} * {i64(stride)} + {var['rx']}, "
         f"{var['rci']} * {i64(2)} + {var['pair']}]")
    b = (f"B[{var['cb']} * {i64(CHANNELS // 2)} + {var['rci']}, {var['ry']}, {var['rx']}, "
         f"{var['ki']}, {var['pair']}]")
    text = f"""
@T.prim_func(s_tir=True)
def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, ({i64(blocks)}, {i64(kh)}, {i64(span)}, {i64(CHANNELS)}), "{STORAGE}",
                       offset_factor=1)
    B = T.match_buffer(b, ({i64(blocks * CHANNELS // 2)}, {i64(kh)}, {i64(kw)}, {i64(LANES)},
                           {i64(2)}), "{STORAGE}", offset_factor=1)
    C = T.match_buffer(c, ({i64(pixels)}, {i64(LANES)}), "{_SUMS}", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:{pixels}, 0:{LANES}], A[0:{blocks}, 0:{kh}, 0:{span}, 0:{CHANNELS}],
                B[0:{blocks * CHANNELS // 2}, 0:{kh}, 0:{kw}, 0:{LANES}, 0:2])
        T.writes(C[0:{pixels}, 0:{LANES}])
        for {", ".join(n for n, _, _ in kept)} in T.grid({", ".join(i64(e) for _, e, _ in kept)}):
            with T.sblock("update"):
                {", ".join(var[n] for n, _, _ in kept)} = T.axis.remap(
                    "{"".join(k for _, _, k in kept)}", [{", ".join(n for n, _, _ in kept)}])
                C[vw, vki] = C[vw, vki] + {widen(a)} * {widen(b)}
"""
    return tvm.script.from_source(text)


def intrinsic(pixels: int, blocks: int, kernel: tuple[int, int], stride: int) -> str:
    """The tensor intrinsic (registered on first use) for a tile of ``pixels`` x 16 filters
    over ``blocks`` channel blocks of 32 and a ``kernel`` window with horizontal ``stride``."""
    kh, kw = kernel
    name = f"lego_tvm.amx_{pixels}x{LANES}_{blocks}x{kh}x{kw}_s{stride}"
    if s_tir.TensorIntrin.get(name, allow_missing=True) is not None:
        return name
    span = (pixels - 1) * stride + kw
    i64 = T.int64

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        a_block = T.int64()
        a_row = T.int64()
        A = T.match_buffer(a, (i64(blocks), i64(kh), i64(span), i64(CHANNELS)), STORAGE,
                           offset_factor=1, strides=[a_block, a_row, i64(CHANNELS), i64(1)])
        B = T.match_buffer(b, (i64(blocks * CHANNELS // 2), i64(kh), i64(kw), i64(LANES),
                               i64(2)), STORAGE, offset_factor=1)
        C = T.match_buffer(c, (i64(pixels), i64(LANES)), _SUMS, offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:pixels, 0:LANES], A[0:blocks, 0:kh, 0:span, 0:CHANNELS],
                    B[0:blocks * CHANNELS // 2, 0:kh, 0:kw, 0:LANES, 0:2])
            T.writes(C[0:pixels, 0:LANES])
            T.evaluate(T.call_extern(
                "void", _FUNCTION, C.access_ptr("rw"), A.access_ptr("r"), B.access_ptr("r"),
                T.int16(pixels), T.int32(blocks * kh * kw), T.int32(kh * kw), T.int32(kw),
                a_block * i64(2), a_row * i64(2), i64(stride * CHANNELS * 2)))

    s_tir.TensorIntrin.register(name, _description(pixels, blocks, kernel, stride), impl)
    return name


_INTRINSIC_NAME = re.compile(r"lego_tvm\.amx_(\d+)x16_(\d+)x(\d+)x(\d+)_s(\d+)")


def register_intrinsics_named_in(text: str) -> None:
    """Register the intrinsics a tuning log's traces name (``intrinsic`` makes them on first
    use, and MetaSchedule cannot read a trace that names one not yet made)."""
    for pixels, blocks, kh, kw, stride in set(_INTRINSIC_NAME.findall(text)):
        intrinsic(int(pixels), int(blocks), (int(kh), int(kw)), int(stride))


def tensorize_tile(sch: s_tir.Schedule, pixels_loop, outer_loop, spec) -> None:
    """Run the loop nest at ``pixels_loop`` (M pixels x 16 filters x the whole reduction) as
    one micro-kernel call; ``outer_loop`` (any loop above it) carries the LLVM IR to link."""
    pixels = int(sch.get(pixels_loop).extent)
    blocks = spec.split_channels // CHANNELS
    sch.tensorize(pixels_loop, intrinsic(pixels, blocks, spec.kernel, spec.stride[1]))
    sch.annotate(outer_loop, "pragma_import_llvm", LLVM_IR)

