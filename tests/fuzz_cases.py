"""Random Lego layers and small Lego networks for the differential fuzz (test_fuzz.py).

Every case is drawn from its own integer seed alone (shapes, weights and inputs), so a
failing case is rebuilt anywhere from that number: ``LEGO_FUZZ_CASE=<seed> pytest
tests/test_fuzz.py``. Many cases are packed into one model (``Packed``: each case has its
own inputs and outputs) so that one compile checks many of them.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from lego_tvm import LegoConv2d
from reference_lego import AuthorsLegoConv2d
from models import randomize_bn


@dataclass
class LayerDraw:
    c: int
    n: int
    o: int
    ratio: float
    d: int
    stride: int
    padding: int
    authors: bool            # the authors' module (stride 1, padding d//2) instead of ours
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    bias: str = ""           # + a per-channel bias, shaped "[1,n,1,1]" or "[n,1,1]", then
    bn: str = ""             # BatchNorm (random statistics; "affine" or "plain"), then
    bias_after_bn: bool = False
    relu_first: bool = False # ReLU before the residual add instead of after it
    residual: str = ""       # "": none, "extra": + an extra input, "skip": + the layer's
                             # input, "lego": + a second Lego layer on the same input
    branch_o: int = 1        # that second layer's splits and ratio
    branch_ratio: float = 1.0
    relu: bool = False
    tap: bool = False        # the Lego conv's raw output is also a model output

    def __str__(self) -> str:
        module = "AuthorsLego" if self.authors else "Lego"
        bias = [f"bias{self.bias}"] if self.bias else []
        steps = ([] if self.bias_after_bn else bias) + ([f"bn({self.bn})"] if self.bn else [])
        steps += (bias if self.bias_after_bn else []) + ["relu"] * (self.relu and self.relu_first)
        if self.residual:
            branch = f" o={self.branch_o} ratio={self.branch_ratio}" * (self.residual == "lego")
            steps.append(f"residual({self.residual}{branch})")
        steps += ["relu"] * (self.relu and not self.relu_first) + ["tap"] * self.tap
        return (f"{module}Conv2d(c={self.c}, n={self.n}, d={self.d}, o={self.o}, "
                f"ratio={self.ratio}, stride={self.stride}, padding={self.padding}) "
                f"{self.in_hw}->{self.out_hw} {'+'.join(steps) or 'plain'}")


@dataclass
class CaseDraw:
    seed: int
    batch: int
    layers: list[LayerDraw] = field(default_factory=list)

    def lego_modules(self) -> list[str]:
        """Names of the Lego modules in ``FuzzCase``: each must be fused."""
        return [f"layers.{j}.{name}" for j, layer in enumerate(self.layers)
                for name in ["conv"] + ["branch"] * (layer.residual == "lego")]

    def __str__(self) -> str:
        return f"case {self.seed}: batch {self.batch}: " + " -> ".join(map(str, self.layers))


def _out(size: int, d: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - d) // stride + 1


def draw_case(seed: int) -> CaseDraw:
    """One random case: a chain of 1-3 Lego layers, each with a random epilogue."""
    rng = random.Random(seed)
    case = CaseDraw(seed, batch=rng.choice([1, 1, 2, 3]))
    hw = (rng.randint(1, 12), rng.randint(1, 12))
    c = None
    for _ in range(rng.choices([1, 2, 3], weights=[7, 2, 1])[0]):
        o = rng.choice([1, 2, 2, 3, 4])
        if c is None:
            # Now and then channels past the last split, which the layer ignores.
            c = o * rng.randint(1, 6)
            c += rng.randint(1, o - 1) if o > 1 and rng.random() < 0.2 else 0
        o = min(o, c)
        n = c if rng.random() < 0.25 else rng.randint(1, 16)     # c == n: a skip can be added
        ratio = rng.choice([0.25, 0.5, 0.75, 1.0, 1.5])
        if int(n * ratio) < 1:
            ratio = 1.0
        d = rng.choice([1, 3, 3, 5])
        authors = rng.random() < 0.25
        stride = 1 if authors else rng.choice([1, 1, 2])
        padding = d // 2 if authors else rng.choice([d // 2] * 3 + list(range(d)))
        if min(hw) + 2 * padding < d:
            padding = d // 2
        out_hw = tuple(_out(s, d, stride, padding) for s in hw)
        layer = LayerDraw(c, n, o, ratio, d, stride, padding, authors, hw, out_hw,
                          bias=rng.choice(["", "", "", "", "[1,n,1,1]", "[n,1,1]"]),
                          bn=rng.choice(["", "", "affine", "affine", "plain"]),
                          bias_after_bn=rng.random() < 0.3, relu=rng.random() < 0.5,
                          tap=rng.random() < 0.1)
        layer.relu_first = layer.relu and rng.random() < 0.15
        same_shape = (c, hw) == (n, out_hw)
        layer.residual = rng.choices(["", "extra", "skip", "lego"],
                                     weights=[4, 2, 3 * same_shape, 1])[0]
        layer.branch_o = rng.choice([k for k in (1, 2, 3, 4) if k <= c])
        layer.branch_ratio = rng.choice([0.25, 0.5, 1.0]) if n >= 4 else 1.0
        case.layers.append(layer)
        c, hw = n, out_hw
    return case


class FuzzLayer(nn.Module):
    def __init__(self, draw: LayerDraw):
        super().__init__()
        self.draw = draw
        if draw.authors:
            self.conv = AuthorsLegoConv2d(draw.c, draw.n, draw.d, draw.o, draw.ratio)
        else:
            self.conv = LegoConv2d(draw.c, draw.n, draw.d, draw.o, draw.ratio,
                                   stride=draw.stride, padding=draw.padding)
        self.branch = None
        if draw.residual == "lego" and draw.authors:
            self.branch = AuthorsLegoConv2d(draw.c, draw.n, draw.d, draw.branch_o,
                                            draw.branch_ratio)
        elif draw.residual == "lego":
            self.branch = LegoConv2d(draw.c, draw.n, draw.d, draw.branch_o, draw.branch_ratio,
                                     stride=draw.stride, padding=draw.padding)
        shape = (1, draw.n, 1, 1) if draw.bias == "[1,n,1,1]" else (draw.n, 1, 1)
        self.bias = nn.Parameter(torch.randn(shape)) if draw.bias else None
        self.bn = (randomize_bn(nn.BatchNorm2d(draw.n, affine=draw.bn == "affine"))
                   if draw.bn else None)

    def forward(self, x, extra=None):
        draw = self.draw
        y = tap = self.conv(x)
        if self.bias is not None and not draw.bias_after_bn:
            y = y + self.bias
        if self.bn is not None:
            y = self.bn(y)
        if self.bias is not None and draw.bias_after_bn:
            y = y + self.bias
        if draw.relu and draw.relu_first:
            y = torch.relu(y)
        if draw.residual == "skip":
            y = y + x
        elif draw.residual == "extra":
            y = y + extra
        elif draw.residual == "lego":
            y = y + self.branch(x)
        if draw.relu and not draw.relu_first:
            y = torch.relu(y)
        return y, tap if draw.tap else None


class FuzzCase(nn.Module):
    """The chain of one ``CaseDraw``: inputs ``x, *extras``, outputs ``y, *taps``."""

    def __init__(self, draw: CaseDraw):
        super().__init__()
        self.draw = draw
        self.layers = nn.ModuleList(FuzzLayer(layer) for layer in draw.layers)

    def forward(self, x, *extras):
        extras, taps = list(extras), []
        for layer in self.layers:
            x, tap = layer(x, extras.pop(0) if layer.draw.residual == "extra" else None)
            taps += [tap] if tap is not None else []
        return [x] + taps


def build_case(draw: CaseDraw) -> tuple[FuzzCase, tuple[torch.Tensor, ...]]:
    """The case's module (in eval mode) and random inputs, all from ``draw.seed``."""
    torch.manual_seed(draw.seed)
    module = FuzzCase(draw).eval()
    first = draw.layers[0]
    inputs = [torch.randn(draw.batch, first.c, *first.in_hw)]
    inputs += [torch.randn(draw.batch, layer.n, *layer.out_hw)
               for layer in draw.layers if layer.residual == "extra"]
    return module, tuple(inputs)


class Packed(nn.Module):
    """Independent cases side by side: all their inputs in, all their outputs out."""

    def __init__(self, cases: list[nn.Module], input_counts: list[int]):
        super().__init__()
        self.cases = nn.ModuleList(cases)
        self.input_counts = input_counts

    def forward(self, *inputs):
        outputs, start = [], 0
        for case, count in zip(self.cases, self.input_counts):
            result = case(*inputs[start:start + count])
            outputs += result if isinstance(result, list) else [result]
            start += count
        return tuple(outputs)


# Near misses: a Lego layer written out split by split with exactly one thing wrong. The
# pass must leave it as it is and say why (with the values involved).

class SplitSum(nn.Module):
    """``sum over i in order: conv2d(conv2d(x[:, slice_i], bank_i, **conv_i), merge_i,
    stride=merge_stride)``, with split ``i`` reading input ``source_i`` (0: x, 1: x2)."""

    def __init__(self, banks, merges, slices, convs, order, sources, merge_stride=1, start=None):
        super().__init__()
        self.banks = nn.ParameterList(banks)
        self.merges = nn.ParameterList(merges)
        self.slices, self.convs, self.order = slices, convs, order
        self.sources, self.merge_stride = sources, merge_stride
        self.start = nn.Parameter(start) if start is not None else None   # the sum's first term

    def forward(self, *xs):
        out = self.start if self.start is not None else 0
        for i in self.order:
            begin, end, step = self.slices[i]
            part = xs[self.sources[i]][:, begin:end:step]
            maps = torch.nn.functional.conv2d(part, self.banks[i], **self.convs[i])
            out = out + torch.nn.functional.conv2d(maps, self.merges[i], stride=self.merge_stride)
        return out


NEAR_MISS_KINDS = ("two_hot", "other_bank", "overlap", "order", "dilation", "groups",
                   "other_input", "strided_slice", "merge_stride", "bias_first",
                   "dense_perturbed")


@dataclass
class NearMiss:
    seed: int
    kind: str
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    reason: str | None       # a regex the rejection must match, values included

    def __str__(self) -> str:
        expected = f"expected reason /{self.reason}/" if self.reason else "no reason expected"
        return f"near miss {self.seed} ({self.kind}): {expected}"


def draw_near_miss(seed: int, kind: str | None = None) -> NearMiss:
    rng = random.Random(seed)
    kind = kind or rng.choice(NEAR_MISS_KINDS)
    o = rng.choice([2, 3, 4])
    b = rng.randint(1, 4) if kind not in ("groups", "strided_slice") else 2 * rng.randint(1, 2)
    m = rng.randint(1, 8) if kind not in ("two_hot", "groups") else 2 * rng.randint(1, 4)
    n = rng.randint(1, 10)
    d = rng.choice([1, 3, 5])
    hw = (rng.randint(d, 10), rng.randint(d, 10))
    batch = rng.choice([1, 2])
    torch.manual_seed(seed)
    bank = torch.randn(m, b, d, d)
    banks = [bank.clone() for _ in range(o)]
    index = torch.randint(0, m, (o, n))
    merges = [torch.zeros(n, m, 1, 1) for _ in range(o)]
    for i in range(o):
        merges[i][torch.arange(n), index[i]] = torch.randn(n, 1, 1)
    slices = [(i * b, (i + 1) * b, 1) for i in range(o)]
    convs = [{"padding": d // 2} for _ in range(o)]
    order, sources, merge_stride, channels, start = list(range(o)), [0] * o, 1, o * b, None
    i = rng.randint(1, o - 1)           # the split that differs, where one split does
    if kind == "two_hot":
        j = rng.randrange(n)
        merges[i][j, (index[i, j] + rng.randint(1, m - 1)) % m] = 0.5 + rng.random()
        reason = f"merge kernel of split {i} is not one-hot: output channel {j} mixes 2 Lego maps"
    elif kind == "other_bank":
        where = (rng.randrange(m), rng.randrange(b), rng.randrange(d), rng.randrange(d))
        banks[i][where] += 0.25
        reason = re.escape(f"split {i} uses a different filter bank than split 0 (shape "
                           f"{list(bank.shape)} in both; 1 of {bank.numel()} weights differ, the "
                           f"first at {list(where)}: {float(banks[i][where])} and "
                           f"{float(bank[where])})")
    elif kind == "overlap":
        shift = rng.randint(1, b) if b > 1 else 1
        slices[i] = (i * b - shift, (i + 1) * b - shift, 1)
        reason = (rf"split {i} reads channels \[{i * b - shift}, {(i + 1) * b - shift}\); "
                  rf"a Lego layer's split {i} reads \[{i * b}, {(i + 1) * b}\)")
    elif kind == "order":
        while order == sorted(order):
            rng.shuffle(order)
        p = next(k for k, split in enumerate(order) if k != split)
        reason = rf"split {p} reads channels \[{order[p] * b}, {(order[p] + 1) * b}\)"
    elif kind == "dilation":
        convs = [{"padding": d - 1, "dilation": 2} for _ in range(o)]
        reason = r"Lego conv of split 0 has dilation=\[2, 2\]"
    elif kind == "groups":
        banks = [bk[:, : b // 2].contiguous() for bk in banks]
        convs = [{"padding": d // 2, "groups": 2} for _ in range(o)]
        reason = r"Lego conv of split 0 has groups=2"
    elif kind == "other_input":
        sources[i] = 1
        shape = rf"\[{batch}, {o * b}, {hw[0]}, {hw[1]}\]"
        reason = (rf"split {i} reads a different tensor than split 0 \(\w+ \(an input, shape "
                  rf"{shape}\) and \w+ \(an input, shape {shape}\)\)")
    elif kind == "strided_slice":
        slices[i] = (i * b, i * b + 2 * b - 1, 2)
        channels = max(channels, i * b + 2 * b - 1)
        reason = r"split input is a slice over axes \[1\] with strides \[2\]"
    elif kind == "merge_stride":
        merge_stride = 2
        reason = r"merge conv of split 0 has strides \[2, 2\] and padding \[0, 0, 0, 0\]"
    elif kind == "dense_perturbed":
        # A Lego layer folded into a dense weight, one weight moved by 1e-7 .. 1e-1 of
        # itself: whatever the dense-folded form makes of it, the output must stay exact.
        # Ordinary convs are not reported, so there is no reason to match.
        dense = torch.cat([torch.stack([merges[i][j, index[i, j], 0, 0] * bank[index[i, j]]
                                        for j in range(n)]) for i in range(o)], dim=1)
        where = (rng.randrange(n), rng.randrange(o * b), rng.randrange(d), rng.randrange(d))
        dense[where] *= 1 + rng.choice([-1, 1]) * 10 ** rng.uniform(-7, -1)
        module = nn.Conv2d(o * b, n, d, padding=d // 2, bias=False).eval()
        module.weight.data.copy_(dense)
        return NearMiss(seed, kind, module, (torch.randn(batch, o * b, *hw),), None)
    elif kind == "bias_first":
        start = torch.randn(1, n, 1, 1)
        reason = (rf"the sum of its {o} Lego splits also adds a constant of shape "
                  rf"\[1, {n}, 1, 1\]")
    else:
        raise ValueError(f"unknown near-miss kind {kind!r}")
    module = SplitSum([nn.Parameter(bk) for bk in banks], [nn.Parameter(mg) for mg in merges],
                      slices, convs, order, sources, merge_stride, start).eval()
    inputs = tuple(torch.randn(batch, channels, *hw) for _ in range(1 + max(sources)))
    return NearMiss(seed, kind, module, inputs, reason)
