"""bf16 1x1 Lego layers on AMX with the filters as the tile rows, so that the Lego maps come
out pixels innermost (``[batch, o, m, H*W]``) and the gather-sum reads them as whole vectors.

``x86_amx.py`` puts pixels on the tile rows: its maps ``[.., m/16, H, W, 16]`` have 16
filters innermost, and the gather-sum of a 1x1 layer (large next to its short reduction)
then reads them one float at a time. Measured on a 2-core Xeon with AMX (2026-11-30, one
kernel alone, default schedules): lego_resnet50's 1x1 layers at 56x56 and 28x28 ran
1.1-3.5x faster this way (64->256 at 56x56: 0.68 -> 0.20 ms).

Here one ``tdpbf16ps`` is C[16 filters x N pixels] += A[16 filters x 32 channels] *
B[32 channels x N pixels], N the largest divisor of H*W up to 16 (16 at 56x56 and 28x28, 14
at 14x14; at least 8). Each uint32 holds a pair of channels' bf16 (``op/bf16.py``):
A is the bank ``[m, b/2]`` (rows ``b * 2`` bytes apart), B the packed input ``[b/2,
H*W]`` (a row is N pixels of one pair of channels, rows ``H * W * 4`` bytes apart), C the
maps (rows ``H * W * 4`` bytes apart). A micro-kernel call computes F x Q accumulator tiles
(16F filters x NQ pixels; the 8 tile registers hold 2 x 2 tiles and their 2 + 2 operands)
over the whole reduction, from zero tiles. A 1x1 stride-2 layer reads every other pixel as
it packs its input, so it is a stride-1 layer here.
"""
from __future__ import annotations

import re

import tvm
from tvm import s_tir

from ..op.bf16 import PAIR_STORAGE
from .x86_amx import CHANNELS, LANES, REQUEST_AMX_CALL, REQUEST_AMX_IR, pixels_per_tile

# Fewer leave too much of a tile idle: at 7x7 (tiles of 7) a 2048->512 layer ran 0.22 ms this
# way against 0.15 with pixels as the tile rows (x86_amx.py), measured alone.
MIN_TILE_PIXELS = 8
_SUMS = "float32"


def tile_pixels(spec) -> int:
    """N, the pixels (columns) of a tile: the largest divisor of the map's pixels up to 16,
    so that tiles cover the map exactly (14 at 14x14)."""
    return pixels_per_tile(spec.out_height * spec.out_width)


def amx_flat_unsupported(spec) -> str | None:
    """Why the flat bf16 kernel of ``spec`` cannot run on AMX tiles (None if it can)."""
    pixels = spec.out_height * spec.out_width
    if tile_pixels(spec) < MIN_TILE_PIXELS:
        return f"{pixels} output pixels: no tile of {MIN_TILE_PIXELS} to 16 pixels divides them"
    return None


def _function(filter_tiles: int, pixel_tiles: int, pixels: int) -> str:
    return f"lego_tvm_amx_flat_{filter_tiles}x{pixel_tiles}_n{pixels}"


def llvm_ir(filter_tiles: int, pixel_tiles: int, pixels: int) -> str:
    """The micro-kernel: ``filter_tiles`` x ``pixel_tiles`` accumulator tiles of 16 filters x
    ``pixels`` zeroed, then ``steps`` blocks of 32 channels (each: load the A and B tiles,
    one tdpbf16ps per accumulator), then stored. Strides in bytes."""
    f_tiles, p_tiles = range(filter_tiles), range(pixel_tiles)
    cols = pixels * 4      # bytes of a C or B row
    lines = [f"define void @{_function(filter_tiles, pixel_tiles, pixels)}(ptr %c, ptr %a, ptr %b, "
             "i32 %steps, i64 %c_row, i64 %a_row, i64 %b_row) {",
             "entry:", REQUEST_AMX_CALL,
             "  %a_tile = shl i64 %a_row, 4", "  %b_step = shl i64 %b_row, 4",
             "  %c_tile = shl i64 %c_row, 4"]
    for f in f_tiles:
        for q in p_tiles:
            lines.append(f"  %z{f}{q} = call x86_amx @llvm.x86.tilezero.internal(i16 16, i16 {cols})")
    lines += ["  br label %loop", "loop:",
              "  %t = phi i32 [0, %start], [%next, %loop]"]
    for f in f_tiles:
        for q in p_tiles:
            lines.append(f"  %acc{f}{q} = phi x86_amx [%z{f}{q}, %start], [%new{f}{q}, %loop]")
    lines += ["  %t64 = zext i32 %t to i64", "  %a_off = shl i64 %t64, 6",
              "  %b_off = mul i64 %t64, %b_step"]
    for f in f_tiles:
        lines += [f"  %a{f}_off = add i64 %a_off, {'%a_tile' if f else '0'}",
                  f"  %pa{f} = getelementptr i8, ptr %a, i64 %a{f}_off",
                  f"  %ta{f} = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, "
                  f"ptr %pa{f}, i64 %a_row)"]
    for q in p_tiles:
        lines += [f"  %b{q}_off = add i64 %b_off, {cols * q}",
                  f"  %pb{q} = getelementptr i8, ptr %b, i64 %b{q}_off",
                  f"  %tb{q} = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 {cols}, "
                  f"ptr %pb{q}, i64 %b_row)"]
    for f in f_tiles:
        for q in p_tiles:
            lines.append(f"  %new{f}{q} = call x86_amx @llvm.x86.tdpbf16ps.internal(i16 16, "
                         f"i16 {cols}, i16 64, x86_amx %acc{f}{q}, x86_amx %ta{f}, x86_amx %tb{q})")
    lines += ["  %next = add i32 %t, 1", "  %done = icmp eq i32 %next, %steps",
              "  br i1 %done, label %exit, label %loop", "exit:"]
    for f in f_tiles:
        for q in p_tiles:
            lines += [f"  %c{f}{q}_off = add i64 {'%c_tile' if f else '0'}, {cols * q}",
                      f"  %pc{f}{q} = getelementptr i8, ptr %c, i64 %c{f}{q}_off",
                      f"  call void @llvm.x86.tilestored64.internal(i16 16, i16 {cols}, "
                      f"ptr %pc{f}{q}, i64 %c_row, x86_amx %new{f}{q})"]
    lines += ["  ret void", "}"]
    return REQUEST_AMX_IR + "\n".join(lines) + "\n"


def _description(filter_tiles: int, pixel_tiles: int, pixels: int, blocks: int):
    """The loop nest the micro-kernel stands for: 16F filters x NQ pixels from zero, over
    ``blocks`` x 16 pairs of channels (a loop of extent 1 dropped, as TVM drops it). B, the
    input, is read before A, the bank, as in the kernel (tensorize matches reads in order)."""
    rows, cols, pairs = LANES * filter_tiles, pixels * pixel_tiles, blocks * CHANNELS // 2
    pair = "vcb * T.int64(16) + vrci" if blocks > 1 else "vrci"
    loops = ["k", "p"] + (["cb"] if blocks > 1 else []) + ["rci"]
    extents = [rows, cols] + ([blocks] if blocks > 1 else []) + [CHANNELS // 2]
    kinds = "SS" + ("R" if blocks > 1 else "") + "R"

    def low(v: str) -> str:
        return f'T.reinterpret("float32", T.shift_left({v}, T.uint32(16)))'

    def high(v: str) -> str:
        return f'T.reinterpret("float32", T.bitwise_and({v}, T.uint32(4294901760)))'
    b, a = f"B[{pair}, vp]", f"A[vk, {pair}]"
    text = f"""
@T.prim_func(s_tir=True)
def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (T.int64({rows}), T.int64({pairs})), "{PAIR_STORAGE}", offset_factor=1)
    B = T.match_buffer(b, (T.int64({pairs}), T.int64({cols})), "{PAIR_STORAGE}", offset_factor=1)
    C = T.match_buffer(c, (T.int64({rows}), T.int64({cols})), "{_SUMS}", offset_factor=1)
    with T.sblock("root"):
        T.reads(B[0:{pairs}, 0:{cols}], A[0:{rows}, 0:{pairs}])
        T.writes(C[0:{rows}, 0:{cols}])
        for {", ".join(loops)} in T.grid({", ".join(f"T.int64({e})" for e in extents)}):
            with T.sblock("update"):
                {", ".join("v" + n for n in loops)} = T.axis.remap("{kinds}", [{", ".join(loops)}])
                T.reads(C[vk, vp], {b}, {a})
                T.writes(C[vk, vp])
                with T.init():
                    C[vk, vp] = T.float32(0)
                C[vk, vp] = C[vk, vp] + ({low(b)} * {low(a)} + {high(b)} * {high(a)})
"""
    return tvm.script.from_source(text)


def _implementation(filter_tiles: int, pixel_tiles: int, pixels: int, blocks: int):
    rows, cols, pairs = LANES * filter_tiles, pixels * pixel_tiles, blocks * CHANNELS // 2
    text = f"""
@T.prim_func(s_tir=True)
def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    a_row = T.int64()
    b_row = T.int64()
    c_row = T.int64()
    A = T.match_buffer(a, (T.int64({rows}), T.int64({pairs})), "{PAIR_STORAGE}",
                       offset_factor=1, strides=[a_row, T.int64(1)])
    B = T.match_buffer(b, (T.int64({pairs}), T.int64({cols})), "{PAIR_STORAGE}",
                       offset_factor=1, strides=[b_row, T.int64(1)])
    C = T.match_buffer(c, (T.int64({rows}), T.int64({cols})), "{_SUMS}", offset_factor=1,
                       strides=[c_row, T.int64(1)])
    with T.sblock("root"):
        T.reads(B[0:{pairs}, 0:{cols}], A[0:{rows}, 0:{pairs}])
        T.writes(C[0:{rows}, 0:{cols}])
        T.evaluate(T.call_extern("void", "{_function(filter_tiles, pixel_tiles, pixels)}",
                                 C.access_ptr("w"), A.access_ptr("r"), B.access_ptr("r"),
                                 T.int32({blocks}), c_row * T.int64(4), a_row * T.int64(4),
                                 b_row * T.int64(4)))
"""
    return tvm.script.from_source(text)


def intrinsic(filter_tiles: int, pixel_tiles: int, pixels: int, blocks: int) -> str:
    """The tensor intrinsic (registered on first use) for ``filter_tiles`` x ``pixel_tiles``
    accumulator tiles of 16 filters x ``pixels`` over ``blocks`` blocks of 32 channels."""
    name = f"lego_tvm.amx_flat_{filter_tiles}x{pixel_tiles}_n{pixels}_{blocks}"
    if s_tir.TensorIntrin.get(name, allow_missing=True) is None:
        shape = (filter_tiles, pixel_tiles, pixels, blocks)
        s_tir.TensorIntrin.register(name, _description(*shape), _implementation(*shape))
    return name


_INTRINSIC_NAME = re.compile(r"lego_tvm\.amx_flat_(\d+)x(\d+)_n(\d+)_(\d+)")


def register_intrinsics_named_in(text: str) -> None:
    """Register the intrinsics a tuning log's traces name."""
    for shape in set(_INTRINSIC_NAME.findall(text)):
        intrinsic(*map(int, shape))


def tensorize_tiles(sch: s_tir.Schedule, filter_loop, outer_loop, filter_tiles: int,
                    pixel_tiles: int, pixels: int, blocks: int) -> None:
    """Run the loop nest at ``filter_loop`` (16F filters x NQ pixels x the whole reduction)
    as one micro-kernel call; ``outer_loop`` (any loop above it) carries the LLVM IR."""
    sch.tensorize(filter_loop, intrinsic(filter_tiles, pixel_tiles, pixels, blocks))
    sch.annotate(outer_loop, "pragma_import_llvm", llvm_ir(filter_tiles, pixel_tiles, pixels))
