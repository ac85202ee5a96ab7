"""Lego layers written with a gather (index_select on the Lego maps): batch-folded (one conv
over the splits folded into the batch) and per split (convs concatenated); fused exactly,
and near misses left alone with the reason."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lego_tvm
from conftest import assert_matches_torch
from lego_tvm.nn.lego_conv import BatchFoldedLegoConv2d
from models import randomize_bn


class PerSplitGatherLego(nn.Module):
    """Per-split convs concatenated, then index_select / scale / sum, from a LegoConv2d."""

    def __init__(self, lego: nn.Module, cross_split: bool = False):
        super().__init__()
        self.folded = BatchFoldedLegoConv2d(lego)
        if cross_split:            # a near miss: term (0, 0) reads a map of split 1
            with torch.no_grad():
                self.folded.flat_index[0] = self.folded.lego_filters
        self.stride, self.padding = self.folded.stride, self.folded.padding

    def forward(self, x):
        f, b = self.folded, self.folded.split_channels
        maps = torch.cat([F.conv2d(x[:, i * b:(i + 1) * b], f.bank, stride=self.stride,
                                   padding=self.padding) for i in range(f.splits)], 1)
        chosen = maps.index_select(1, f.flat_index)
        return (chosen.reshape(x.shape[0], f.splits, -1, *maps.shape[2:]) * f.coef).sum(1)


class WithEpilogue(nn.Module):
    def __init__(self, layer, n):
        super().__init__()
        self.layer, self.bn = layer, randomize_bn(nn.BatchNorm2d(n))

    def forward(self, x, r):
        return torch.relu(self.bn(self.layer(x)) + r)


@pytest.mark.parametrize("form,make", [("batch-folded gather", BatchFoldedLegoConv2d),
                                       ("per-split gather", PerSplitGatherLego)])
@pytest.mark.parametrize("c,n,d,o,ratio,stride", [(16, 24, 3, 2, 0.5, 1), (12, 8, 1, 4, 0.5, 1),
                                                  (16, 16, 3, 2, 0.25, 2)])
def test_gather_forms_are_fused_with_their_epilogue(form, make, c, n, d, o, ratio, stride):
    lego = lego_tvm.LegoConv2d(c, n, d, o, ratio, stride=stride).eval()
    model = WithEpilogue(make(lego), n).eval()
    x = torch.randn(2, c, 9, 9)
    with torch.no_grad():
        r = torch.randn_like(lego(x))
    compiled = lego_tvm.compile(model, (x, r), tuning_logs=None)
    (layer,) = compiled.report.layers
    assert layer.form == form and layer.spec.splits == o
    assert layer.folded == ["batch_norm", "residual_add", "relu"]
    assert_matches_torch(compiled, model, (x, r))


def test_a_gather_term_reading_another_splits_map_is_left_alone():
    lego = lego_tvm.LegoConv2d(8, 8, 3, 2, 0.5).eval()
    model = PerSplitGatherLego(lego, cross_split=True).eval()
    x = torch.randn(1, 8, 6, 6)
    compiled = lego_tvm.compile(model, (x,), tuning_logs=None)
    assert compiled.report.layers == []
    (skip,) = compiled.report.skipped
    assert "gather term (split 0, channel 0) reads Lego map 4, outside split 0's maps [0, 4)" \
        in skip.reason
    assert_matches_torch(compiled, model, (x,))
