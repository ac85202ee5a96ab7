"""Lego layers written with a gather: the index table is an integer tensor and the chosen
Lego maps are picked with ``index_select`` / ``take``, scaled and summed over the splits.

    y = (L.index_select(1, flat_index).reshape(B, o, n, H, W) * coef).sum(1)

with the Lego maps ``L`` (``[B, o*m, H, W]``, split-major) computed either

- batch-folded: ``conv2d(x[:, :o*b].reshape(B*o, b, H, W), bank).reshape(B, o*m, H, W)``
  (``lego_conv.BatchFoldedLegoConv2d``), or
- per split: ``cat([conv2d(x[:, i*b:(i+1)*b], bank) for i in range(o)], 1)``.

Proven like the split-conv form (``recognize.py``): one shared constant bank, contiguous
in-order slices, a constant index whose term ``(i, j)`` reads a map of split ``i``, constant
coefficients; then fused with the same epilogue folding.
"""
from __future__ import annotations

import logging

import numpy as np
from tvm import relax

from ..op.fused_op import LegoConvSpec
from .lego import (Graph, LegoMatch, NotLego, Rejection, check_conv_attrs, ints, slice_range,
                   with_epilogue)
from ..support.tvm_compat import const_array, nchw_shape

log = logging.getLogger("lego_tvm")


def find_gather_lego_layers(func: relax.Function) -> tuple[list[LegoMatch], list[Rejection]]:
    """Every gather-form Lego layer of ``func``, and the gather-sums that are near misses."""
    graph = Graph(func)
    matches, rejections, claimed = [], [], set()
    for var in reversed(graph.order):
        tail = _gather_sum(graph, var)
        if tail is None or var in claimed:
            continue
        try:
            match = _verify(graph, var, *tail)
        except NotLego as err:
            log.info("lego-tvm: not rewriting %s: %s", var.name, err)
            rejections.append(Rejection(var.name, str(err)))
            continue
        matches.append(with_epilogue(graph, match, claimed))
    matches.reverse()
    rejections.reverse()
    return matches, rejections


def _gather_sum(graph: Graph, var):
    """``(maps, flat_index, coef [o, n])`` if ``var`` is sum_1(reshape(take(maps)) * coef)."""
    total = graph.call(var, "relax.sum")
    if total is None or ints(total.attrs.axis or []) != [1] or bool(total.attrs.keepdims):
        return None
    product = graph.call(total.args[0], "relax.multiply")
    if product is None:
        return None
    args = list(product.args)
    for picked, scale in (args, args[::-1]):
        reshape = graph.call(picked, "relax.reshape")
        coef = const_array(scale)
        take = graph.call(reshape.args[0], "relax.take") if reshape is not None else None
        if take is None or coef is None:
            continue
        shape = nchw_shape(picked, rank=5)                    # [B, o, n, H, W]
        index = const_array(take.args[1])
        if shape is None or index is None or index.ndim != 1 or int(take.attrs.axis) != 1:
            return None
        splits, n = shape[1:3]
        # Broadcast against [B, o, n, H, W]: one coefficient per (split, out channel).
        if (1,) * (5 - coef.ndim) + coef.shape != (1, splits, n, 1, 1):
            return None
        return take.args[0], index.astype(np.int64), coef.reshape(splits, n).astype(np.float32)
    return None


def _verify(graph: Graph, anchor, maps, flat_index, coef) -> LegoMatch:
    splits, n = coef.shape
    conv, x, split_channels, convs = _lego_maps(graph, maps, splits)
    check_conv_attrs(conv, "bank conv")
    bank = const_array(conv.args[1])
    if bank is None:
        raise NotLego("the bank conv's weight is not a constant")
    m, b, kh, kw = bank.shape
    if b != split_channels:
        raise NotLego(f"the bank has {b} input channels per filter, the splits {split_channels}")
    for other in convs[1:]:
        check_conv_attrs(other, "bank conv")
        same_attrs = all(ints(getattr(other.attrs, a)) == ints(getattr(conv.attrs, a))
                         for a in ("strides", "padding"))
        weight = const_array(other.args[1])
        if not same_attrs or weight is None or not np.array_equal(weight, bank):
            raise NotLego("the splits are not convolved with one shared bank and the same "
                           "strides and padding")
    if flat_index.size != splits * n:
        raise NotLego(f"the index has {flat_index.size} entries, not o*n = {splits * n}")
    index = flat_index.reshape(splits, n)
    split_of = index // m
    if index.min() < 0 or index.max() >= splits * m or \
            (split_of != np.arange(splits)[:, None]).any():
        i, j = map(int, np.argwhere(split_of != np.arange(splits)[:, None])[0]) \
            if (split_of != np.arange(splits)[:, None]).any() else (0, 0)
        raise NotLego(f"gather term (split {i}, channel {j}) reads Lego map "
                       f"{int(index[i, j])}, outside split {i}'s maps "
                       f"[{i * m}, {(i + 1) * m}); each term must read its own split")
    if str(bank.dtype) != "float32" or str(anchor.ty.dtype) != "float32":
        raise NotLego(f"dtype {bank.dtype}; only float32 is supported")
    x_shape = nchw_shape(x)
    if x_shape is None:
        raise NotLego(f"input shape {x.ty} is not a 4-D NCHW shape with static channels, "
                       "height and width")
    pad = ints(conv.attrs.padding)
    spec = LegoConvSpec(batch=x_shape[0], in_channels=x_shape[1], height=x_shape[2],
                        width=x_shape[3], out_channels=n, splits=splits, lego_filters=m,
                        split_channels=b, kernel=(kh, kw), stride=tuple(ints(conv.attrs.strides)),
                        padding=tuple(pad * 2 if len(pad) == 2 else pad))
    form = "batch-folded gather" if len(convs) == 1 and splits > 1 else "per-split gather"
    return LegoMatch(spec=spec, data=x, bank=bank, index=(index % m).astype("int32"),
                     coef=coef, bias=np.zeros(n, "float32"), residual=None, anchor=anchor,
                     var_name=anchor.name, form=form)


def _lego_maps(graph: Graph, maps, splits: int):
    """``(a bank conv, x, channels per split, all bank convs)`` behind the Lego maps."""
    folded = graph.call(maps, "relax.reshape")
    if folded is not None:                                     # batch-folded
        conv = graph.call(folded.args[0], "relax.nn.conv2d")
        unfold = graph.call(conv.args[0], "relax.reshape") if conv is not None else None
        if unfold is None:
            raise NotLego("the gathered maps are a reshape of something other than a "
                           "conv over the splits folded into the batch")
        unfolded, folded_in = nchw_shape(unfold.args[0]), nchw_shape(conv.args[0])
        folded_out, out = nchw_shape(folded.args[0]), nchw_shape(maps)
        if None in (unfolded, folded_in, folded_out, out) or \
                folded_in[1] * splits != unfolded[1] or folded_in[2:] != unfolded[2:] or \
                folded_out[1] * splits != out[1] or folded_out[2:] != out[2:]:
            raise NotLego(f"the conv does not run over the input's {splits} channel splits "
                           "folded into the batch and back")
        x, begin, end = slice_range(graph, unfold.args[0], unfolded[1])
        if (begin, end) != (0, unfolded[1]):
            raise NotLego(f"the folded channels are [{begin}, {end}), not the first "
                           f"{unfolded[1]}")
        return conv, x, folded_in[1], [conv]
    concat = graph.call(maps, "relax.concat")
    if concat is None or int(concat.attrs.axis) != 1:
        raise NotLego("the gathered Lego maps are neither a batch-folded conv nor a "
                       "concatenation of per-split convs")
    parts = list(concat.args[0].fields)
    if len(parts) != splits:
        raise NotLego(f"{len(parts)} per-split conv outputs concatenated for {splits} splits")
    convs = [graph.call(p, "relax.nn.conv2d") for p in parts]
    if any(c is None for c in convs):
        raise NotLego("a concatenated Lego map is not a conv output")
    b = const_array(convs[0].args[1]).shape[1] if const_array(convs[0].args[1]) is not None \
        else None
    x = None
    for i, conv in enumerate(convs):
        source, begin, end = slice_range(graph, conv.args[0], b or 0)
        x = source if x is None else x
        if not source.same_as(x) or b is None or (begin, end) != (i * b, (i + 1) * b):
            raise NotLego(f"split {i} reads channels [{begin}, {end}) of its input; a Lego "
                           f"layer's split {i} reads [{i * (b or 0)}, {(i + 1) * (b or 0)}) "
                           "of the same input")
    return convs[0], x, b, convs
