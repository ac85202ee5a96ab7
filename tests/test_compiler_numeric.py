"""Compiled output against PyTorch on random inputs: single Lego layers over a grid of
shapes and epilogues, the authors' module, and near misses (compiled unfused, still right)."""
import itertools

import pytest
import torch
from torch import nn

import lego_tvm
from conftest import assert_matches_torch, assert_same_as_torch
from models import EPILOGUES, LegoBlock, block_inputs, randomize_bn
from lego_tvm import LegoConv2d
from reference_lego import AuthorsLegoConv2d

# Every (o, kernel, stride, batch) combination; c, n, ratio, size and epilogue cycle through.
GRID = [(o, d, s, batch, [4, 8, 12][i % 3] * o // (o if i % 2 else 1), [4, 8, 16][i % 3],
         [0.5, 0.25, 1.0][i % 3], [7, 9, 8][i % 3], EPILOGUES[i % len(EPILOGUES)])
        for i, (o, d, s, batch) in enumerate(itertools.product([1, 2, 4], [1, 3, 5], [1, 2], [1, 4]))]


def _channels(c, o):
    return max(c - c % o, o)


@pytest.mark.parametrize("o,d,stride,batch,c,n,ratio,size,epilogue", GRID,
                         ids=[f"o{g[0]}-k{g[1]}-s{g[2]}-b{g[3]}-c{g[4]}-n{g[5]}-r{g[6]}-{g[8] or 'plain'}"
                              for g in GRID])
def test_single_lego_layer(o, d, stride, batch, c, n, ratio, size, epilogue):
    c = _channels(c, o)
    block = LegoBlock(c, n, d, o, ratio, stride, epilogue).eval()
    inputs = block_inputs(block, batch, c, size)
    compiled = lego_tvm.compile(block, inputs)
    assert len(compiled.report.layers) == 1, compiled.report
    layer = compiled.report.layers[0]
    assert (layer.spec.splits, layer.spec.lego_filters) == (o, int(n * ratio))
    expected_folds = [f for f in ("batch_norm", "residual_add", "relu")
                      if f.split("_")[0] in epilogue.replace("bn", "batch")]
    assert layer.folded == expected_folds
    assert_matches_torch(compiled, block, inputs)
    with_nan = inputs[0].clone()
    with_nan[-1, 0, size // 2, size // 3] = float("nan")
    assert_same_as_torch(compiled, block, (with_nan, *inputs[1:]))


def test_channels_past_the_last_split_are_ignored_like_the_reference():
    layer = AuthorsLegoConv2d(10, 8, 3, 3, 0.5).eval()      # 3 splits of 3 channels, 1 unused
    x = torch.randn(1, 10, 8, 8)
    compiled = lego_tvm.compile(layer, (x,))
    assert len(compiled.report.layers) == 1
    assert_matches_torch(compiled, layer, (x,))


def test_authors_module_compiles_unchanged_and_is_left_unchanged():
    model = nn.Sequential(AuthorsLegoConv2d(8, 16, 3, 2, 0.5), randomize_bn(nn.BatchNorm2d(16)),
                          nn.ReLU(inplace=True), AuthorsLegoConv2d(16, 16, 3, 4, 0.25)).eval()
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        model(x)
    before = {id(m): dict(vars(m)) for m in model.modules()}
    compiled = lego_tvm.compile(model, (x,))
    assert len(compiled.report.layers) == 2
    assert compiled.report.layers[0].folded == ["batch_norm", "relu"]
    for m in model.modules():
        assert set(vars(m)) == set(before[id(m)]), "compile left attributes on the model"
        proxy = vars(m).get("proxy_combination")
        if proxy is not None:
            assert type(proxy) is torch.Tensor, "a fake tensor from tracing was left behind"
    assert_matches_torch(compiled, model, (x,))


class TwoHotLego(nn.Module):
    """A near miss written in PyTorch: split 1's merge mixes two Lego maps."""

    def __init__(self):
        super().__init__()
        self.lego = nn.Parameter(torch.randn(4, 4, 3, 3))
        merge = torch.zeros(2, 8, 4, 1, 1)
        merge[:, torch.arange(8), torch.arange(8) % 4] = torch.randn(2, 8, 1, 1)
        merge[1, 3, (3 + 1) % 4] = 0.7
        self.register_buffer("merge", merge)

    def forward(self, x):
        out = 0
        for i in range(2):
            lego = torch.nn.functional.conv2d(x[:, 4 * i:4 * (i + 1)], self.lego, padding=1)
            out = out + torch.nn.functional.conv2d(lego, self.merge[i])
        return out


def test_near_miss_compiles_unfused_and_correct():
    model = TwoHotLego().eval()
    x = torch.randn(1, 8, 6, 6)
    compiled = lego_tvm.compile(model, (x,))
    assert compiled.report.layers == []
    assert "not one-hot" in compiled.report.skipped[0].reason
    assert_matches_torch(compiled, model, (x,))


def test_without_the_pass_the_import_alone_is_exact():
    """Guards the importer (e.g. TVM 0.27's aten.batch_norm mapping, fixed in frontend/pytorch.py)."""
    model = LegoBlock(8, 8, 3, 2, 0.5, 1, "bn+relu").eval()
    x = torch.randn(1, 8, 6, 6)
    compiled = lego_tvm.compile(model, (x,), fuse_lego=False)
    assert compiled.report.layers == []
    assert_matches_torch(compiled, model, (x,))


class OpenEndedSlices(torch.nn.Module):
    """A Lego layer whose last split is written ``x[:, b:]`` (slice to the end)."""

    def __init__(self):
        super().__init__()
        self.inner = LegoConv2d(8, 8, 3, 2, 0.5)

    def forward(self, x):
        kernels = self.inner.merge_kernels()
        parts = [x[:, :4], x[:, 4:]]
        out = 0
        for i, part in enumerate(parts):
            lego = torch.nn.functional.conv2d(part, self.inner.lego, padding=1)
            out = out + torch.nn.functional.conv2d(lego, kernels[i])
        return out


def test_slice_to_the_end_is_recognized():
    model = OpenEndedSlices().eval()
    x = torch.randn(1, 8, 6, 6)
    compiled = lego_tvm.compile(model, (x,))
    assert len(compiled.report.layers) == 1, compiled.report
    assert_matches_torch(compiled, model, (x,))


class TwoLegoLayersAdded(nn.Module):
    """``lego_a(x) + lego_b(y)`` with nothing in between: the sum holds the splits of both."""

    def __init__(self, same_input: bool):
        super().__init__()
        self.a = LegoConv2d(8, 8, 3, 2, 0.5)
        self.b = LegoConv2d(8, 8, 3, 4, 0.25)
        self.same_input = same_input

    def forward(self, x, y):
        return torch.relu(self.a(x) + self.b(x if self.same_input else y))


@pytest.mark.parametrize("same_input", [True, False])
def test_two_lego_layers_added_together_are_both_fused(same_input):
    """Found by the fuzz (case 5): the add tree of ``a(x) + b(x)`` was taken as one
    6-split layer, rejected ("split 2 uses a different filter bank"), and neither was fused."""
    model = TwoLegoLayersAdded(same_input).eval()
    inputs = (torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6))
    compiled = lego_tvm.compile(model, inputs)
    assert sorted(layer.name for layer in compiled.report.layers) == ["a", "b"], compiled.report
    assert compiled.report.skipped == []
    assert ["residual_add", "relu"] in [layer.folded for layer in compiled.report.layers]
    assert_matches_torch(compiled, model, inputs)


class SumStartsFromABias(nn.Module):
    """A Lego layer written ``out = bias; out = out + split_i``: the bias is inside the sum."""

    def __init__(self):
        super().__init__()
        self.inner = LegoConv2d(8, 8, 3, 2, 0.5)
        self.bias = nn.Parameter(torch.randn(1, 8, 1, 1))

    def forward(self, x):
        kernels = self.inner.merge_kernels()
        out = self.bias
        for i in range(2):
            lego = torch.nn.functional.conv2d(x[:, 4 * i:4 * (i + 1)], self.inner.lego, padding=1)
            out = out + torch.nn.functional.conv2d(lego, kernels[i])
        return out


def test_lego_sum_with_a_bias_inside_is_left_whole_and_explained():
    """Found by the near-miss fuzz: split 0 alone was fused as a one-split Lego layer and
    split 1 reported with a misleading reason ("split 0 reads channels [4, 8)")."""
    model = SumStartsFromABias().eval()
    x = torch.randn(1, 8, 6, 6)
    compiled = lego_tvm.compile(model, (x,))
    assert [layer.form for layer in compiled.report.layers if layer.form == "split convs"] == []
    assert [s.reason.split(";")[0] for s in compiled.report.skipped] == [
        "the sum of its 2 Lego splits also adds a constant of shape [1, 8, 1, 1]"]
    assert_matches_torch(compiled, model, (x,))
