"""bf16 arithmetic for the fused Lego kernel: storage in bf16, every product summed in fp32.

TVM 0.27 lowers its ``bfloat16`` type to ``uint16`` storage on CPUs and rewrites bf16
arithmetic into fp32, which also rewrites the operands of an intrinsic that needs LLVM's
``<32 x bfloat>`` (found by trying: the module then fails LLVM's verifier). So the kernel
keeps bf16 values as their bit patterns in ``uint16`` tensors and converts them itself:
``to_float32`` widens exactly (a shift), ``round_to_bf16`` rounds to nearest even and keeps
NaN a NaN (adding the rounding bias to a NaN's bits could make it an infinity).

A bf16 kernel (``LegoConvSpec.bf16``) takes and returns float32 tensors, or bf16 bits where
the spec says (``bf16_input``, ``bf16_residual``, ``bf16_output``: a tensor between two
bf16 kernels). It rounds a float32 input to bf16 as it pads it, into ``[batch, o,
channels/P, H, W, P]`` (``PACK_BLOCK``: each pair of channels adjacent, for the 2-channel
dot product of ``vdpbf16ps``), convolves that with
the bank ``[m/V, channels/2, kh, kw, V, 2]`` in bf16 with fp32 sums, and gather-sums the
fp32 Lego maps with the fp32 epilogue. A split's channel count is padded to even with a zero
channel.

The maps stay fp32: rounded to bf16 they moved lego_resnet50's error from 2.8e-2 to 3.8e-2
of its largest output (OpenVINO's bf16: 2.6e-2), and they live in L1/L2 tiles anyway.
"""
from __future__ import annotations

import numpy as np
import torch
from tvm import te, tirx

from ..support.tir_nan import is_nan

STORAGE = "uint16"
PACK_BLOCK = "lego_pack_bf16"     # the padded bf16 input
MAX_CHANNEL_BLOCK = 32            # P: channels innermost in the packed input


def even_channels(split_channels: int) -> int:
    """A split's channels, padded to even for the pairwise dot product."""
    return split_channels + split_channels % 2


def channel_block(split_channels: int) -> int:
    """P, the channels innermost in the packed input: the largest even divisor of the
    (even) channel count up to ``MAX_CHANNEL_BLOCK`` (32 bf16 are one 64-byte line)."""
    channels = even_channels(split_channels)
    return max(p for p in range(2, MAX_CHANNEL_BLOCK + 1, 2) if channels % p == 0)


def to_float32(bits):
    """The float32 value of bf16 bits (exact)."""
    return tirx.reinterpret("float32", tirx.shift_left(bits.astype("uint32"),
                                                       tirx.const(16, "uint32")))


def round_to_bf16(value):
    """bf16 bits of a float32 value, rounded to nearest even; NaN stays NaN."""
    bits = tirx.reinterpret("uint32", value)
    sixteen = tirx.const(16, "uint32")
    odd = tirx.bitwise_and(tirx.shift_right(bits, sixteen), tirx.const(1, "uint32"))
    rounded = tirx.shift_right(bits + tirx.const(0x7FFF, "uint32") + odd, sixteen)
    return tirx.Select(is_nan(value), tirx.const(0x7FC0, STORAGE), rounded.astype(STORAGE))


def as_bits(value):
    """bf16 bits of a kernel tensor's element: itself if it holds bf16 bits already
    (``STORAGE``), else the float32 rounded."""
    return value if value.dtype == STORAGE else round_to_bf16(value)


def as_float32(value):
    """The float32 value of a kernel tensor's element, float32 or bf16 bits."""
    return to_float32(value) if value.dtype == STORAGE else value


def bf16_bits(array: np.ndarray) -> np.ndarray:
    """float32 array -> its bf16 bits (uint16), rounded to nearest even as PyTorch does."""
    return torch.from_numpy(np.ascontiguousarray(array, np.float32)).bfloat16().view(
        torch.uint16).numpy()


def bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bf16 bits (uint16) -> float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def pack_bank(bank: np.ndarray, block: int) -> np.ndarray:
    """``[m, b, kh, kw]`` float32 -> bf16 bits ``[m/block, b'/2, kh, kw, block, 2]``, ``b'``
    = ``even_channels(b)``: one 64-byte load gives two channels' weight of ``block`` filters
    for one ``vdpbf16ps``."""
    m, b, kh, kw = bank.shape
    if b % 2:
        bank = np.concatenate([bank, np.zeros((m, 1, kh, kw), bank.dtype)], axis=1)
        b += 1
    packed = bank.reshape(m // block, block, b // 2, 2, kh, kw).transpose(0, 2, 4, 5, 1, 3)
    return bf16_bits(packed)


def unpack_bank(packed: np.ndarray, split_channels: int) -> np.ndarray:
    """The inverse of ``pack_bank``, as float32 ``[m, b, kh, kw]`` (the bank after rounding)."""
    blocks, pairs, kh, kw, block, _ = packed.shape
    bank = bits_to_float32(packed).transpose(0, 4, 1, 5, 2, 3)
    return np.ascontiguousarray(bank.reshape(blocks * block, pairs * 2, kh, kw)[:, :split_channels])


def pack_input(x, spec, batch, padding: tuple[int, int, int, int]):
    """The input, padded and rounded to bf16: ``[batch, o, b'/P, H', W', P]`` uint16."""
    s = spec
    pt, pl, pb, pr = padding
    p = channel_block(s.split_channels)
    shape = (batch, s.splits, even_channels(s.split_channels) // p,
             s.height + pt + pb, s.width + pl + pr, p)

    def value(nb, i, cb, y, xx, cp):
        c = cb * p + cp
        channel = i * s.split_channels + c
        read = (x[nb, channel, y - pt, xx - pl] if s.in_block == 1 else
                x[nb, channel // s.in_block, y - pt, xx - pl, channel % s.in_block])
        inside = tirx.all(c < s.split_channels, y >= pt, y < s.height + pt, xx >= pl,
                          xx < s.width + pl)
        return tirx.if_then_else(inside, as_bits(read), tirx.const(0, STORAGE))
    return te.compute(shape, value, name=PACK_BLOCK)


def lego_maps(packed, bank, spec, batch, lego_block: str):
    """The Lego maps, summed in fp32 and kept in fp32: ``[batch, o, m/V, H, W, V]``."""
    s = spec
    p = packed.shape[-1]
    rco = te.reduce_axis((0, packed.shape[2]), name="rco")
    ry = te.reduce_axis((0, s.kernel[0]), name="ry")
    rx = te.reduce_axis((0, s.kernel[1]), name="rx")
    rci = te.reduce_axis((0, p // 2), name="rci")
    pair = te.reduce_axis((0, 2), name="pair")
    sh, sw = s.stride

    def lego_map(nb, i, ko, h, w, ki):
        return te.sum(to_float32(packed[nb, i, rco, h * sh + ry, w * sw + rx, rci * 2 + pair])
                      * to_float32(bank[ko, rco * (p // 2) + rci, ry, rx, ki, pair]),
                      axis=[rco, ry, rx, rci, pair])
    shape = (batch, s.splits, s.lego_filters // s.bank_block, s.out_height, s.out_width,
             s.bank_block)
    return te.compute(shape, lego_map, name=lego_block)


# A 1x1 layer on AMX keeps its maps pixels innermost (``schedules/x86_amx_flat.py``). Its
# input and bank hold a pair of channels' bf16 in one uint32 (the even channel in the low
# half: AMX's pair order), so that packing is whole-vector arithmetic along the pixels.
PAIR_STORAGE = "uint32"


def flat_unsupported(spec) -> str | None:
    """Why the bf16 kernel of ``spec`` cannot keep its maps pixels innermost (None if it can):
    on NCHW tensors, with channels per split in whole blocks of 32, 1x1 unpadded layers (any
    stride: the packing reads every ``stride``-th pixel) and stride-1 layers padded to keep
    their size (``flat_layout``)."""
    s = spec
    if s.in_block != 1 or s.out_block != 1:
        return "blocked (NCHW[x]c) input or output"
    if s.split_channels % MAX_CHANNEL_BLOCK:
        return f"{s.split_channels} channels per split, not a multiple of {MAX_CHANNEL_BLOCK}"
    if _one_by_one(s):
        return None
    if s.stride != (1, 1) or (s.out_height, s.out_width) != (s.height, s.width):
        return "neither a 1x1 unpadded convolution nor a stride-1 one that keeps its size"
    if flat_layout(s) is None:
        return (f"no row pitch of {s.width + s.kernel[1] - 1} to "
                f"{s.width + s.kernel[1] - 1 + MAX_PITCH_WASTE} pixels makes a row task's "
                f"maps whole tiles of {FLAT_TILE}")
    return None


def _one_by_one(spec) -> bool:
    return spec.kernel == (1, 1) and not any(spec.padding)


# A kxk flat kernel stores its padded input in rows of ``flat_layout``'s pitch (the width,
# the padding, then unused pixels), so that a tap is an offset in the flattened pixels: the
# map at p = y * pitch + x reads the input at p + ky * pitch + kx. Its maps come in tasks of
# t rows, ``[batch, o, H/t, m, (t - 1) * pitch + W]`` (a task's last row ends at the
# width), whole AMX tiles of 16 pixels: a task computes its maps, then their gather-sum.
FLAT_TILE = 16
MAX_PITCH_WASTE = 4     # unused pixels a row at most
MIN_FLAT_TASKS = 4      # row tasks a map at least, where the pitch allows (else one)


def flat_layout(spec) -> tuple[int, int] | None:
    """(pitch, rows per task) of a kxk flat kernel: the pitch from ``W + kw - 1`` to
    ``MAX_PITCH_WASTE`` more and the rows t dividing H that make a task's maps whole pairs
    of tiles, else whole tiles; at least ``MIN_FLAT_TASKS`` tasks where some t gives them, the
    most rows a task among those. None if no pitch makes whole tiles."""
    s = spec
    least = s.width + s.kernel[1] - 1
    for tasks, tiles in ((MIN_FLAT_TASKS, 2), (MIN_FLAT_TASKS, 1), (1, 2), (1, 1)):
        for pitch in range(least, least + MAX_PITCH_WASTE + 1):
            rows = [t for t in range(1, s.out_height + 1) if s.out_height % t == 0
                    and s.out_height // t >= tasks
                    and ((t - 1) * pitch + s.out_width) % (tiles * FLAT_TILE) == 0]
            if rows:
                return pitch, max(rows)
    return None


def flat_pixels(spec) -> int:
    """The pixels of a 1x1 flat kernel's maps and packed input: the output's H*W, rounded up
    to a multiple of ``spec.flat_pad_to`` (the maps past H*W are computed and never read)."""
    pixels = spec.out_height * spec.out_width
    return -(-pixels // spec.flat_pad_to) * spec.flat_pad_to if spec.flat_pad_to else pixels


def flat_map_shape(spec, batch) -> tuple:
    """The shape of a flat kernel's maps: ``[batch, o, m, H*W]`` (``flat_pixels``) for a 1x1
    layer, else
    ``[batch, o, tasks, m, task pixels]`` (``flat_layout``; a tile's region in them is then
    2-D after unit dimensions, as tensorize matches it)."""
    s = spec
    if _one_by_one(s):
        return (batch, s.splits, s.lego_filters, flat_pixels(s))
    pitch, rows = flat_layout(s)
    return (batch, s.splits, s.out_height // rows, s.lego_filters,
            (rows - 1) * pitch + s.out_width)


def flat_map_index(spec, nb, i, k, h, w) -> tuple:
    """The index in a flat kernel's maps of map ``k`` of split ``i`` at output pixel (h, w)."""
    if _one_by_one(spec):
        return (nb, i, k, h * spec.out_width + w)
    pitch, rows = flat_layout(spec)
    return (nb, i, h // rows, k, h % rows * pitch + w)


def _flat_input_rows(spec) -> int:
    """The rows of a kxk flat kernel's packed input: all its maps' taps read."""
    s = spec
    pitch = flat_layout(s)[0]
    last = (s.out_height - 1 + s.kernel[0] - 1) * pitch + s.out_width - 1 + s.kernel[1] - 1
    return last // pitch + 1


def flat_bank(bank: np.ndarray) -> np.ndarray:
    """``[m, b, kh, kw]`` float32 -> uint32 holding a pair of channels' bf16 bits: ``[m,
    b/2]`` for a 1x1 bank, else ``[kh, kw, m, b/2]`` (a tap's filters in rows)."""
    m, _, kh, kw = bank.shape
    pairs = np.ascontiguousarray(pack_bank(bank, 1).reshape(m, -1, kh, kw, 2)).view(np.uint32)
    pairs = pairs[..., 0]
    if (kh, kw) == (1, 1):
        return np.ascontiguousarray(pairs[..., 0, 0])
    return np.ascontiguousarray(pairs.transpose(2, 3, 0, 1))


def flat_bank_shape(spec) -> tuple:
    """The shape of ``flat_bank``'s result for ``spec``."""
    pairs = spec.split_channels // 2
    return ((spec.lego_filters, pairs) if spec.kernel == (1, 1)
            else (*spec.kernel, spec.lego_filters, pairs))


def kernel_bank(bank: np.ndarray, spec) -> np.ndarray:
    """The bank ``[m, b, kh, kw]`` as the bf16 kernel of ``spec`` takes it."""
    return flat_bank(bank) if spec.flat_pixels else pack_bank(bank, spec.bank_block)


def low_half(pair):
    """The float32 value of the bf16 in the low half of a uint32 (exact)."""
    return tirx.reinterpret("float32", tirx.shift_left(pair, tirx.const(16, PAIR_STORAGE)))


def high_half(pair):
    """The float32 value of the bf16 in the high half of a uint32 (exact)."""
    return tirx.reinterpret("float32", tirx.bitwise_and(pair, tirx.const(0xFFFF0000,
                                                                          PAIR_STORAGE)))


def pack_input_flat(x, spec, batch):
    """The input rounded to bf16, a pair of channels a uint32, pixels flattened: ``[batch,
    o, b/2, H*W]`` (of the output: a strided layer reads every ``stride``-th pixel) for a 1x1
    layer; for a kxk one ``[batch, o, b/2, rows * pitch]``, padded (``flat_layout``)."""
    s = spec
    one = _one_by_one(s)
    width = s.out_width if one else flat_layout(s)[0]
    pt, pl = s.padding[:2]

    def value(nb, i, c2, p):
        if one and s.flat_pad_to:     # past the output's pixels: its last one again
            p = tirx.min(p, s.out_height * s.out_width - 1)
        y, xx = p // width, p % width
        if one:
            y, xx = y * s.stride[0], xx * s.stride[1]
        else:
            y, xx = y - pt, xx - pl

        def channel(pair):
            read = x[nb, i * s.split_channels + c2 * 2 + pair, y, xx]
            return as_bits(read).astype(PAIR_STORAGE)
        pairs = tirx.bitwise_or(channel(0), tirx.shift_left(channel(1),
                                                            tirx.const(16, PAIR_STORAGE)))
        if one:
            return pairs
        inside = tirx.all(y >= 0, y < s.height, xx >= 0, xx < s.width)
        return tirx.if_then_else(inside, pairs, tirx.const(0, PAIR_STORAGE))
    pixels = flat_pixels(s) if one else _flat_input_rows(s) * width
    return te.compute((batch, s.splits, s.split_channels // 2, pixels), value,
                      name=PACK_BLOCK)


def lego_maps_flat(packed, bank, spec, batch, lego_block: str):
    """The Lego maps, summed in fp32, pixels innermost (``flat_map_shape``). The reduction
    is blocks of 16 pairs of channels (an AMX tile's 32 channels), then a kxk layer's taps."""
    s = spec
    rcb = te.reduce_axis((0, packed.shape[2] // 16), name="rcb")
    rci = te.reduce_axis((0, 16), name="rci")
    if _one_by_one(s):
        def lego_map(nb, i, k, p):
            pair, weights = packed[nb, i, rcb * 16 + rci, p], bank[k, rcb * 16 + rci]
            return te.sum(low_half(pair) * low_half(weights)
                          + high_half(pair) * high_half(weights), axis=[rcb, rci])
        return te.compute(flat_map_shape(s, batch), lego_map, name=lego_block)
    pitch, rows = flat_layout(s)
    ry = te.reduce_axis((0, s.kernel[0]), name="ry")
    rx = te.reduce_axis((0, s.kernel[1]), name="rx")

    def lego_tap_map(nb, i, task, k, p):
        pair = packed[nb, i, rcb * 16 + rci, task * (rows * pitch) + p + ry * pitch + rx]
        weights = bank[ry, rx, k, rcb * 16 + rci]
        return te.sum(low_half(pair) * low_half(weights) + high_half(pair) * high_half(weights),
                      axis=[rcb, ry, rx, rci])
    return te.compute(flat_map_shape(s, batch), lego_tap_map, name=lego_block)
