"""bf16 Lego layers on AMX with the filters as the tile rows, so that the Lego maps come out
pixels innermost (``[batch, o, m, H*W]``) and the gather-sum reads them as whole vectors.

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

A kxk stride-1 layer (``op/bf16.flat_layout``) packs its padded input in rows of a pitch, so
that tap (ky, kx) is B's pointer moved by ``ky * pitch + kx`` pixels; the bank is ``[kh, kw,
m, b/2]`` and a step of the micro-kernel is a (block, tap) pair. Its maps come in row tasks
``[.., H/t, m, (t - 1) * pitch + W]``. Measured alone, default schedules (2026-12-01):
lego_resnet50's 64->64 3x3 at 56x56 ran 0.20 -> 0.13 ms this way, 128->128 at 28x28 0.12 ->
0.11; smaller maps ran slower (``precision.FLAT_TAPS_MIN_PIXELS``).
"""
from __future__ import annotations

import re

import tvm
from tvm import s_tir

from ..op.bf16 import PAIR_STORAGE, flat_layout, flat_map_shape
from .x86_amx import CHANNELS, LANES, REQUEST_AMX_CALL, REQUEST_AMX_IR, pixels_per_tile

# Fewer leave too much of a tile idle: at 7x7 (tiles of 7) a 2048->512 layer ran 0.22 ms this
# way against 0.15 with pixels as the tile rows (x86_amx.py), measured alone.
MIN_TILE_PIXELS = 8
_SUMS = "float32"

# A kxk layer's taps (``Taps``): the map at pixel p reads the input at p + ky * pitch + kx
# (``op/bf16.flat_layout``), and tap ky * kw + kx of the bank is ``a_tap`` bytes after tap 0.
Taps = tuple  # (kh, kw, pitch); None for a 1x1 layer


def tile_pixels(spec) -> int:
    """N, the pixels (columns) of a tile: the largest divisor of the map's pixels (a row
    task's, for a kxk layer) up to 16, so that tiles cover the map exactly (14 at 14x14)."""
    return pixels_per_tile(flat_map_shape(spec, 1)[-1])


def taps(spec) -> Taps | None:
    """The taps of a kxk flat kernel (None for a 1x1 one)."""
    return None if spec.kernel == (1, 1) else (*spec.kernel, flat_layout(spec)[0])


def amx_flat_unsupported(spec) -> str | None:
    """Why the flat bf16 kernel of ``spec`` cannot run on AMX tiles (None if it can)."""
    pixels = flat_map_shape(spec, 1)[-1]
    if spec.flat_pad_to:
        return "padded pixels (flat_pad_to) are for vdpbf16ps; AMX tiles divide the pixels"
    if tile_pixels(spec) < MIN_TILE_PIXELS:
        return f"{pixels} output pixels: no tile of {MIN_TILE_PIXELS} to 16 pixels divides them"
    return None


def _function(filter_tiles: int, pixel_tiles: int, pixels: int, taps: Taps | None = None
              ) -> str:
    name = f"lego_tvm_amx_flat_{filter_tiles}x{pixel_tiles}_n{pixels}"
    return name + (f"_k{taps[0]}x{taps[1]}_p{taps[2]}" if taps else "")


def llvm_ir(filter_tiles: int, pixel_tiles: int, pixels: int, taps: Taps | None = None) -> str:
    """The micro-kernel: ``filter_tiles`` x ``pixel_tiles`` accumulator tiles of 16 filters x
    ``pixels`` zeroed, then ``steps`` blocks of 32 channels (each: load the A and B tiles,
    one tdpbf16ps per accumulator), then stored. Strides in bytes. With ``taps``, a step is
    a (block, tap) pair, taps innermost."""
    f_tiles, p_tiles = range(filter_tiles), range(pixel_tiles)
    cols = pixels * 4      # bytes of a C or B row
    lines = [f"define void @{_function(filter_tiles, pixel_tiles, pixels, taps)}(ptr %c, "
             "ptr %a, ptr %b, i32 %steps, i64 %c_row, i64 %a_row, i64 %b_row"
             + (", i64 %a_tap" if taps else "") + ") {",
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
    if taps:
        kh, kw, pitch = taps
        lines += [f"  %block = udiv i32 %t, {kh * kw}", f"  %tap = urem i32 %t, {kh * kw}",
                  f"  %ky = udiv i32 %tap, {kw}", f"  %kx = urem i32 %tap, {kw}",
                  f"  %shift = mul i32 %ky, {pitch}", "  %pixel = add i32 %shift, %kx",
                  "  %block64 = zext i32 %block to i64", "  %tap64 = zext i32 %tap to i64",
                  "  %pixel64 = zext i32 %pixel to i64",
                  "  %a_block = shl i64 %block64, 6", "  %a_taps = mul i64 %tap64, %a_tap",
                  "  %a_off = add i64 %a_block, %a_taps",
                  "  %b_block = mul i64 %block64, %b_step", "  %b_pixel = shl i64 %pixel64, 2",
                  "  %b_off = add i64 %b_block, %b_pixel"]
    else:
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


def _description(filter_tiles: int, pixel_tiles: int, pixels: int, blocks: int,
                 taps: Taps | None = None):
    """The loop nest the micro-kernel stands for: 16F filters x NQ pixels from zero, over
    ``blocks`` x 16 pairs of channels (a loop of extent 1 dropped, as TVM drops it), and the
    taps. B, the input, is read before A, the bank, as in the kernel (tensorize matches
    reads in order)."""
    rows, cols, pairs, span, a_shape, a_region = _operands(filter_tiles, pixel_tiles, pixels,
                                                           blocks, taps)
    kh, kw, pitch = taps or (1, 1, 0)
    pair = "vcb * T.int64(16) + vrci" if blocks > 1 else "vrci"
    tap_loops = [(n, e) for n, e in (("ry", kh), ("rx", kw)) if e > 1]
    loops = ["k", "p"] + (["cb"] if blocks > 1 else []) + [n for n, _ in tap_loops] + ["rci"]
    extents = [rows, cols] + ([blocks] if blocks > 1 else []) + [e for _, e in tap_loops] + \
        [CHANNELS // 2]
    kinds = "SS" + "R" * (len(loops) - 2)

    def low(v: str) -> str:
        return f'T.reinterpret("float32", T.shift_left({v}, T.uint32(16)))'

    def high(v: str) -> str:
        return f'T.reinterpret("float32", T.bitwise_and({v}, T.uint32(4294901760)))'
    if taps:
        ry = "vry" if kh > 1 else "T.int64(0)"
        rx = "vrx" if kw > 1 else "T.int64(0)"
        b, a = f"B[{pair}, vp + {ry} * T.int64({pitch}) + {rx}]", f"A[{ry}, {rx}, vk, {pair}]"
    else:
        b, a = f"B[{pair}, vp]", f"A[vk, {pair}]"
    text = f"""
@T.prim_func(s_tir=True)
def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, ({a_shape}), "{PAIR_STORAGE}", offset_factor=1)
    B = T.match_buffer(b, (T.int64({pairs}), T.int64({span})), "{PAIR_STORAGE}", offset_factor=1)
    C = T.match_buffer(c, (T.int64({rows}), T.int64({cols})), "{_SUMS}", offset_factor=1)
    with T.sblock("root"):
        T.reads(B[0:{pairs}, 0:{span}], {a_region})
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


def _operands(filter_tiles: int, pixel_tiles: int, pixels: int, blocks: int,
              taps: Taps | None) -> tuple:
    """The tiles' rows (filters), columns (pixels) and channel pairs; the input pixels a call
    reads (a kxk layer's reach past its tile's pixels); the bank's shape and region as
    TVMScript (``[m, b/2]``, or ``[kh, kw, m, b/2]`` with taps)."""
    rows, cols, pairs = LANES * filter_tiles, pixels * pixel_tiles, blocks * CHANNELS // 2
    if not taps:
        return (rows, cols, pairs, cols, f"T.int64({rows}), T.int64({pairs})",
                f"A[0:{rows}, 0:{pairs}]")
    kh, kw, pitch = taps
    return (rows, cols, pairs, cols + (kh - 1) * pitch + kw - 1,
            f"T.int64({kh}), T.int64({kw}), T.int64({rows}), T.int64({pairs})",
            f"A[0:{kh}, 0:{kw}, 0:{rows}, 0:{pairs}]")


def _implementation(filter_tiles: int, pixel_tiles: int, pixels: int, blocks: int,
                    taps: Taps | None = None):
    """The micro-kernel's call. With taps, the bank's taps are ``a_tap`` elements apart (its
    rows ky are kw taps apart, as in ``bf16.flat_bank``) and a step is a (block, tap) pair."""
    rows, cols, pairs, span, a_shape, a_region = _operands(filter_tiles, pixel_tiles, pixels,
                                                           blocks, taps)
    kh, kw, _ = taps or (1, 1, 0)
    a_strides = "a_ky, a_tap, a_row, T.int64(1)" if taps else "a_row, T.int64(1)"
    tap_vars = "    a_ky = T.int64()\n    a_tap = T.int64()\n" if taps else ""
    tap_stride = ", a_tap * T.int64(4)" if taps else ""
    text = f"""
@T.prim_func(s_tir=True)
def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
{tap_vars}    a_row = T.int64()
    b_row = T.int64()
    c_row = T.int64()
    A = T.match_buffer(a, ({a_shape}), "{PAIR_STORAGE}", offset_factor=1,
                       strides=[{a_strides}])
    B = T.match_buffer(b, (T.int64({pairs}), T.int64({span})), "{PAIR_STORAGE}",
                       offset_factor=1, strides=[b_row, T.int64(1)])
    C = T.match_buffer(c, (T.int64({rows}), T.int64({cols})), "{_SUMS}", offset_factor=1,
                       strides=[c_row, T.int64(1)])
    with T.sblock("root"):
        T.reads(B[0:{pairs}, 0:{span}], {a_region})
        T.writes(C[0:{rows}, 0:{cols}])
        T.evaluate(T.call_extern("void", "{_function(filter_tiles, pixel_tiles, pixels, taps)}",
                                 C.access_ptr("w"), A.access_ptr("r"), B.access_ptr("r"),
                                 T.int32({blocks * kh * kw}), c_row * T.int64(4),
                                 a_row * T.int64(4), b_row * T.int64(4){tap_stride}))
"""
    return tvm.script.from_source(text)


def intrinsic(filter_tiles: int, pixel_tiles: int, pixels: int, blocks: int,
              taps: Taps | None = None) -> str:
    """The tensor intrinsic (registered on first use) for ``filter_tiles`` x ``pixel_tiles``
    accumulator tiles of 16 filters x ``pixels`` over ``blocks`` blocks of 32 channels (and
    a kxk layer's ``taps``)."""
    name = f"lego_tvm.amx_flat_{filter_tiles}x{pixel_tiles}_n{pixels}_{blocks}"
    if taps:
        name += f"_k{taps[0]}x{taps[1]}_p{taps[2]}"
    if s_tir.TensorIntrin.get(name, allow_missing=True) is None:
        shape = (filter_tiles, pixel_tiles, pixels, blocks, taps)
        s_tir.TensorIntrin.register(name, _description(*shape), _implementation(*shape))
    return name


_INTRINSIC_NAME = re.compile(r"lego_tvm\.amx_flat_(\d+)x(\d+)_n(\d+)_(\d+)"
                            r"(?:_k(\d+)x(\d+)_p(\d+))?")


def register_intrinsics_named_in(text: str) -> None:
    """Register the intrinsics a tuning log's traces name."""
    for *shape, kh, kw, pitch in set(_INTRINSIC_NAME.findall(text)):
        intrinsic(*map(int, shape), (int(kh), int(kw), int(pitch)) if kh else None)


def tensorize_tiles(sch: s_tir.Schedule, filter_loop, outer_loop, filter_tiles: int,
                    pixel_tiles: int, pixels: int, blocks: int, taps: Taps | None = None
                    ) -> None:
    """Run the loop nest at ``filter_loop`` (16F filters x NQ pixels x the whole reduction)
    as one micro-kernel call; ``outer_loop`` (any loop above it) carries the LLVM IR."""
    sch.tensorize(filter_loop, intrinsic(filter_tiles, pixel_tiles, pixels, blocks, taps))
    sch.annotate(outer_loop, "pragma_import_llvm",
                 llvm_ir(filter_tiles, pixel_tiles, pixels, taps))
