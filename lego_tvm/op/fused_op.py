"""The fused Lego convolution: compute the ``o*m`` Lego feature maps once, then gather-sum.

``y[b, j] = epilogue(bias[j] + sum_i coef[i, j] * L[b, i, index[i, j]])`` with
``L[b, i, k] = conv2d(x[b, i*split_channels : (i+1)*split_channels], bank[k])``.
The epilogue optionally adds a residual tensor and applies ReLU, in that order (ResNet's
``relu(bn(conv) + shortcut)``).

The compute is versioned: tuning records are keyed by the TIR it produces, and
``COMPUTE_VERSION`` names it in tuning-log manifests. Bump it whenever the TIR changes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
from tvm import s_tir, te, tirx, topi

from . import bf16, winograd
from ..support.tiling import has_block

COMPUTE_VERSION = 2   # 2: the ReLU keeps NaN
SCHEDULE_RULE = "lego_tvm.fused_lego_conv2d"
# Block names the schedules look up.
PAD_BLOCK, LEGO_BLOCK, GATHER_BLOCK = "lego_pad", "lego_feature", "lego_gather_sum"
# The attribute naming the spec of a gather-sum stage alone (its maps come from oneDNN).
GATHER_SPEC_ATTR = "lego_tvm.gather_spec"


@dataclass(frozen=True)
class LegoConvSpec:
    """Static description of one fused Lego convolution (all shapes NCHW)."""
    batch: int | None         # None: chosen at call time (a symbolic batch)
    in_channels: int          # c, channels of the input tensor (may exceed splits * split_channels)
    height: int
    width: int
    out_channels: int         # n
    splits: int               # o
    lego_filters: int         # m
    split_channels: int       # b = c // o
    kernel: tuple[int, int]   # (kh, kw)
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]   # top, left, bottom, right
    has_residual: bool = False
    relu: bool = False
    dtype: str = "float32"
    bank_block: int = 1       # Lego filters per block of the packed bank (SIMD lanes)
    # Channel blocks of the input and of the output (and residual): 1 is NCHW, V > 1 is
    # NCHW[V]c, ``[batch, channels/V, H, W, V]`` (NeoCPU); chosen by ``transform.blocked_layout``.
    in_block: int = 1
    out_block: int = 1
    # Lego maps stored pixels innermost, ``[batch, o, m, H*W]`` (the bank unpacked), so the
    # gather-sum reads whole vectors of one map: 1x1 stride-1 unpadded NCHW layers only
    # (``flat_pixels_unsupported``); in bf16 on AMX, 1x1 unpadded layers of any stride
    # (``bf16.flat_unsupported``). Else ``[batch, o, m/bank_block, H, W, bank_block]``.
    flat_pixels: bool = False
    # A bf16 1x1 flat kernel on vdpbf16ps whose output pixels are not whole vectors: its maps
    # (and packed input) hold the pixels rounded up to a multiple of this (``bf16.flat_pixels``);
    # 0: exactly the output's pixels.
    flat_pad_to: int = 0
    # Winograd F(r x r, 3x3) for the compute-once stage (``op/winograd.py``): r, the output
    # tile (2 or 4); 0 is the direct conv. The bank is then ``winograd.transform_bank``'s.
    winograd: int = 0
    # bf16 storage, fp32 sums (``op/bf16.py``): the bank is ``bf16.pack_bank``'s; the
    # epilogue runs in float32.
    bf16: bool = False
    # Which of a bf16 kernel's tensors are bf16 bits (``bf16.STORAGE``) instead of float32:
    # the input, the residual, the output (``precision.to_bf16`` sets each where the tensor
    # runs between two bf16 kernels).
    bf16_input: bool = False
    bf16_residual: bool = False
    bf16_output: bool = False

    @property
    def input_shape(self) -> tuple:
        return _blocked((self.batch, self.in_channels, self.height, self.width), self.in_block)

    @property
    def output_shape(self) -> tuple:
        return _blocked((self.batch, self.out_channels, self.out_height, self.out_width),
                        self.out_block)

    @property
    def out_height(self) -> int:
        return (self.height + self.padding[0] + self.padding[2] - self.kernel[0]) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        return (self.width + self.padding[1] + self.padding[3] - self.kernel[1]) // self.stride[1] + 1

    @property
    def lego_macs(self) -> int:
        """Multiply-adds per call: compute once (m filters over all o*b channels) plus the
        o-term gather-sum."""
        pixels = (self.batch or 1) * self.out_height * self.out_width
        once = self.lego_filters * self.splits * self.split_channels * self.kernel[0] * \
            self.kernel[1]
        return pixels * (once + self.out_channels * self.splits)

    def as_dict(self) -> dict:
        fields = asdict(self)
        # NCHW kernels keep the attributes (and so the tuning-record hash) they had before
        # the blocked layouts existed.
        for key, plain in (("in_block", 1), ("out_block", 1), ("flat_pixels", False),
                           ("flat_pad_to", 0),
                           ("winograd", 0), ("bf16", False), ("bf16_input", False),
                           ("bf16_residual", False), ("bf16_output", False)):
            if fields[key] == plain:
                del fields[key]
        return fields


def flat_pixels_unsupported(spec: LegoConvSpec) -> str | None:
    """Why ``spec`` cannot store its Lego maps pixels innermost (None if it can)."""
    s = spec
    if s.kernel != (1, 1) or s.stride != (1, 1) or any(s.padding):
        return "not a 1x1 stride-1 unpadded convolution"
    if s.in_block != 1 or s.out_block != 1:
        return "blocked (NCHW[x]c) input or output"
    if s.in_channels != s.splits * s.split_channels:
        return "the splits read only part of the input channels"
    return None


def winograd_unsupported(spec: LegoConvSpec) -> str | None:
    """Why the compute-once stage of ``spec`` cannot run by Winograd (None if it can)."""
    s = spec
    if s.kernel != (3, 3) or s.stride != (1, 1):
        return "not a 3x3 stride-1 convolution"
    if s.in_block != 1 or s.flat_pixels:
        return "blocked (NCHW[x]c) input" if s.in_block != 1 else "pixels-innermost maps"
    if s.dtype != "float32":
        return f"dtype {s.dtype}"
    if s.bf16:
        return "bf16 (the Winograd kernel is fp32 only)"
    return None


def bf16_unsupported(spec: LegoConvSpec, lanes: int) -> str | None:
    """Why ``spec`` cannot run in bf16 with ``lanes`` fp32 sums per vector (None if it can)."""
    s = spec
    if s.dtype != "float32":
        return f"dtype {s.dtype}"
    if s.winograd:
        return "Winograd (fp32 only)"
    if s.lego_filters % lanes:
        return f"{s.lego_filters} Lego filters, not a multiple of {lanes}"
    return None


def layout_name(block: int) -> str:
    """The layout of a tensor whose channels come in blocks of ``block``."""
    return "NCHW" if block == 1 else f"NCHW{block}c"


def _blocked(shape: tuple, block: int) -> tuple:
    """NCHW -> NCHW[block]c (``block`` 1: NCHW unchanged)."""
    if block == 1:
        return shape
    n, c, h, w = shape
    return (n, c // block, h, w, block)


def pack_bank(bank: np.ndarray, block: int) -> np.ndarray:
    """``[m, b, kh, kw]`` -> ``[m/block, b, kh, kw, block]``: ``block`` filters side by side,
    so one SIMD load gives one weight of ``block`` Lego filters (NCHW[x]c, NeoCPU)."""
    m = bank.shape[0]
    return np.ascontiguousarray(bank.reshape(m // block, block, *bank.shape[1:])
                                .transpose(0, 2, 3, 4, 1))


def unpack_bank(packed: np.ndarray, block: int) -> np.ndarray:
    """The inverse of ``pack_bank``: ``[m/block, b, kh, kw, block]`` -> ``[m, b, kh, kw]``."""
    blocks, b, kh, kw, _ = packed.shape
    return np.ascontiguousarray(packed.transpose(0, 4, 1, 2, 3).reshape(blocks * block, b, kh, kw))


def lego_conv2d_compute(spec: LegoConvSpec):
    """TE tensors ``(x, bank, index, coef, bias[, residual], out)`` of the fused operator.

    ``bank`` is packed (``pack_bank``) and so is the Lego feature tile,
    ``[batch, o, m/block, H, W, block]``.
    """
    s = spec
    vb, ib = s.bank_block, s.in_block
    if s.lego_filters % vb:
        raise ValueError(f"bank_block {vb} does not divide the {s.lego_filters} Lego filters")
    if s.flat_pixels:
        why_not = (bf16.flat_unsupported(s) if s.bf16 else flat_pixels_unsupported(s)) or (
            f"bank_block {vb}, not 1" if vb != 1 else None)
        if why_not:
            raise ValueError(f"flat_pixels: {why_not}")
    if s.flat_pad_to and not (s.bf16 and s.flat_pixels and s.kernel == (1, 1)):
        raise ValueError("flat_pad_to: only a bf16 1x1 kernel with flat maps pads its pixels")
    if s.split_channels % ib or s.out_channels % s.out_block:
        raise ValueError(f"channel blocks {ib} (in) / {s.out_block} (out) do not divide the "
                         f"{s.split_channels} channels per split / {s.out_channels} outputs")
    if s.winograd and winograd_unsupported(s):
        raise ValueError(f"winograd: {winograd_unsupported(s)}")
    if not s.bf16 and (s.bf16_input or s.bf16_residual or s.bf16_output):
        raise ValueError("bf16 input, residual or output tensors need a bf16 kernel (bf16=True)")
    batch = s.batch if s.batch is not None else tirx.Var("batch", "int64")
    x = te.placeholder(_with_batch(s.input_shape, batch), _tensor_dtype(s, s.bf16_input),
                       name="x")
    if s.winograd:
        alpha = s.winograd + 2
        bank_shape = (alpha, alpha, s.lego_filters // vb, s.split_channels, vb)
    elif s.bf16 and s.flat_pixels:
        bank_shape = bf16.flat_bank_shape(s)
    elif s.bf16:
        bank_shape = (s.lego_filters // vb, bf16.even_channels(s.split_channels) // 2) + \
            s.kernel + (vb, 2)
    else:
        bank_shape = (s.lego_filters // vb, s.split_channels) + s.kernel + (vb,)
    bank_dtype = (bf16.PAIR_STORAGE if s.flat_pixels else bf16.STORAGE) if s.bf16 else s.dtype
    bank = te.placeholder(bank_shape, bank_dtype, name="bank")
    index = te.placeholder((s.splits, s.out_channels), "int32", name="index")
    coef = te.placeholder((s.splits, s.out_channels), s.dtype, name="coef")
    bias = te.placeholder((s.out_channels,), s.dtype, name="bias")
    residual = (te.placeholder(_with_batch(s.output_shape, batch),
                               _tensor_dtype(s, s.bf16_residual), name="residual")
                if s.has_residual else None)

    pt, pl, pb, pr = s.padding
    if s.winograd:
        more_bottom, more_right = winograd.extra_padding(s, s.winograd)
        pb, pr = pb + more_bottom, pr + more_right
    tail = [0] if ib > 1 else []
    padded = (topi.nn.pad(x, [0, 0, pt, pl] + tail, [0, 0, pb, pr] + tail, name=PAD_BLOCK)
              if any((pt, pl, pb, pr)) and not s.bf16 else x)
    ry = te.reduce_axis((0, s.kernel[0]), name="ry")
    rx = te.reduce_axis((0, s.kernel[1]), name="rx")
    sh, sw = s.stride
    # Stage 1, compute once: every split convolved with the one shared bank.
    if s.winograd:
        lego = winograd.lego_maps(padded, bank, s, batch, s.winograd)
    elif s.bf16 and s.flat_pixels:
        lego = bf16.lego_maps_flat(bf16.pack_input_flat(x, s, batch), bank, s, batch, LEGO_BLOCK)
    elif s.bf16:
        lego = bf16.lego_maps(bf16.pack_input(x, s, batch, (pt, pl, pb, pr)), bank, s, batch,
                              LEGO_BLOCK)
    elif s.flat_pixels:
        rc = te.reduce_axis((0, s.split_channels), name="rc")
        width = s.width

        def flat_map(nb, i, k, p):
            return te.sum(x[nb, i * s.split_channels + rc, p // width, p % width]
                          * bank[k, rc, 0, 0, 0], axis=[rc])
        lego = te.compute((batch, s.splits, s.lego_filters, s.height * s.width), flat_map,
                          name=LEGO_BLOCK)
    elif ib == 1:
        rc = te.reduce_axis((0, s.split_channels), name="rc")

        def lego_map(nb, i, ko, h, w, ki):
            return te.sum(padded[nb, i * s.split_channels + rc, h * sh + ry, w * sw + rx]
                          * bank[ko, rc, ry, rx, ki], axis=[rc, ry, rx])
    else:
        # NCHW[ib]c input: the reduction over a split's channels is blocks x lanes, the
        # lanes outside the window (lanes innermost measured 25% slower: 7.4 vs 5.8 ms).
        rco = te.reduce_axis((0, s.split_channels // ib), name="rco")
        rci = te.reduce_axis((0, ib), name="rci")
        blocks = s.split_channels // ib

        def lego_map(nb, i, ko, h, w, ki):
            return te.sum(padded[nb, i * blocks + rco, h * sh + ry, w * sw + rx, rci]
                          * bank[ko, rco * ib + rci, ry, rx, ki], axis=[rco, rci, ry, rx])
    if not (s.flat_pixels or s.winograd or s.bf16):
        lego = te.compute((batch, s.splits, s.lego_filters // vb, s.out_height, s.out_width, vb),
                          lego_map, name=LEGO_BLOCK)

    # Stage 2, gather-sum with the fused epilogue.
    out = _gather_sum(s, lego, index, coef, bias, residual)
    args = [x, bank, index, coef, bias] + ([residual] if residual is not None else []) + [out]
    return args


def _tensor_dtype(spec: LegoConvSpec, bf16_bits: bool) -> str:
    """The dtype of a kernel tensor of ``spec`` that holds bf16 bits when ``bf16_bits``."""
    return bf16.STORAGE if bf16_bits else spec.dtype


def _with_batch(shape: tuple, batch) -> tuple:
    return (batch,) + tuple(shape[1:])


def _gather_sum(s: LegoConvSpec, lego, index, coef, bias, residual):
    vb, ob = s.bank_block, s.out_block

    def gather_sum(nb, j, h, w, *position):
        out_index = (nb, j, h, w) + position
        if ob > 1:             # NCHW[ob]c output: j is the channel block, position its lane
            j = j * ob + position[0]
        acc = bias[j]
        for i in range(s.splits):
            k = index[i, j]
            if s.winograd:   # bounded, so that the maps can be computed at a row tile
                k = tirx.max(tirx.min(k, s.lego_filters - 1), 0)
            acc = acc + coef[i, j] * (lego[bf16.flat_map_index(s, nb, i, k, h, w)]
                                      if s.flat_pixels
                                      else lego[nb, i, k // vb, h, w, k % vb])
        if residual is not None:
            acc = acc + bf16.as_float32(residual[out_index])
        if s.relu:     # NaN stays NaN, as in PyTorch (TVM's max(acc, 0) would give 0)
            zero = tirx.const(0, s.dtype)
            acc = tirx.Select(acc < zero, zero, acc)
        return bf16.round_to_bf16(acc) if s.bf16_output else acc

    return te.compute(_with_batch(s.output_shape, lego.shape[0]), gather_sum,
                      name=GATHER_BLOCK, attrs={"schedule_rule": SCHEDULE_RULE})


def lego_gather_compute(spec: LegoConvSpec):
    """TE tensors ``(lego, index, coef, bias[, residual], out)`` of the gather-sum stage alone,
    for Lego feature maps computed elsewhere (the oneDNN backend), in the packed layout."""
    s = spec
    batch = s.batch if s.batch is not None else tirx.Var("batch", "int64")
    lego = te.placeholder((batch, s.splits, s.lego_filters // s.bank_block, s.out_height,
                           s.out_width, s.bank_block), s.dtype, name="lego")
    index = te.placeholder((s.splits, s.out_channels), "int32", name="index")
    coef = te.placeholder((s.splits, s.out_channels), s.dtype, name="coef")
    bias = te.placeholder((s.out_channels,), s.dtype, name="bias")
    residual = (te.placeholder(_with_batch(s.output_shape, batch), s.dtype, name="residual")
                if s.has_residual else None)
    out = _gather_sum(s, lego, index, coef, bias, residual)
    return [lego, index, coef, bias] + ([residual] if residual is not None else []) + [out]


def lego_conv2d_prim_func(spec: LegoConvSpec) -> tirx.PrimFunc:
    """The fused operator as a PrimFunc; opaque to FuseOps so it keeps its own schedule."""
    return _prim_func(lego_conv2d_compute(spec), spec, "lego_tvm.spec")


def lego_gather_prim_func(spec: LegoConvSpec) -> tirx.PrimFunc:
    """The gather-sum stage alone (``lego_gather_compute``) as an opaque PrimFunc."""
    return _prim_func(lego_gather_compute(spec), spec, GATHER_SPEC_ATTR)


def _prim_func(tensors, spec: LegoConvSpec, spec_attr: str) -> tirx.PrimFunc:
    # int64 indices: int32 ones break FuseTIR when fused with int64 neighbours.
    func = te.create_prim_func(tensors, index_dtype_override="int64")
    # MetaSchedule: only the custom rule (on the gather-sum block) schedules this function;
    # "None" keeps the generic rules off the other blocks and the root.
    sch = s_tir.Schedule(func)
    for name in ("root", PAD_BLOCK, LEGO_BLOCK, bf16.PACK_BLOCK) + winograd.STAGES:
        if has_block(sch, name):
            sch.annotate(sch.get_sblock(name), "schedule_rule", "None")
    func = sch.mod["main"]
    # No global_symbol: the pipeline names each copy after its GlobalVar.
    return func.without_attr("global_symbol").with_attrs({
        "op_pattern": 8,   # kOpaque: FuseOps must not merge neighbours into it
        "lego_tvm.compute_version": COMPUTE_VERSION,
        spec_attr: json.dumps(spec.as_dict()),
    })



def spec_of(func: tirx.PrimFunc, attr: str = "lego_tvm.spec") -> LegoConvSpec | None:
    """The spec a fused Lego PrimFunc was made from (or, with ``attr=GATHER_SPEC_ATTR``, a
    gather-sum stage alone), or None for any other PrimFunc."""
    text = func.attrs.get(attr) if func.attrs is not None else None
    if text is None:
        return None
    fields = json.loads(str(text))
    for key in ("kernel", "stride", "padding"):
        fields[key] = tuple(fields[key])
    return LegoConvSpec(**fields)


def lego_kernels(mod) -> list[tuple]:
    """``(global_var, prim_func, spec)`` for each fused Lego kernel of IRModule ``mod``."""
    found = []
    for gvar, func in mod.functions_items():
        spec = spec_of(func) if isinstance(func, tirx.PrimFunc) else None
        if spec is not None:
            found.append((gvar, func, spec))
    return found
