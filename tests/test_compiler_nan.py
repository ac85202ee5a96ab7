"""NaN and Inf as PyTorch: ReLU (fused into a Lego kernel or not), ReLU6, clamp and max-pool
keep a NaN, checked position by position (each layer of the numeric grid is checked with a
NaN pixel too, in test_compiler_numeric.py); an Inf into a Lego layer gives what the Lego
formula gives (docs/how-it-works.md, "NaN and Inf")."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import lego_tvm
from conftest import assert_same_as_torch
from lego_tvm.nn.lego_conv import BatchFoldedLegoConv2d, is_lego_module
from lego_tvm.zoo import get_model


class PoolsAndClamps(nn.Module):
    def __init__(self):
        super().__init__()
        self.lego, self.bn = lego_tvm.LegoConv2d(8, 16, 3), nn.BatchNorm2d(16)

    def forward(self, x):
        y = torch.relu(self.bn(self.lego(x)))                      # ReLU fused into the kernel
        p = nn.functional.max_pool2d(y, 3, 2, 1, ceil_mode=True)
        return torch.relu(p - 0.5) + torch.clamp(p, -1, 1) + nn.functional.relu6(p - 3)


def _with_nan(shape, pixels):
    x = torch.randn(*shape)
    for position in pixels:
        x[position] = float("nan")
    return x


@pytest.mark.parametrize("pixels", [[(0, 2, 3, 4)], [(0, 0, 0, 0), (0, 7, 7, 7)]])
def test_relu_clamp_and_max_pool_keep_nan_where_pytorch_does(pixels):
    model = PoolsAndClamps().eval()
    x = _with_nan((1, 8, 8, 8), pixels)
    compiled = lego_tvm.compile(model, (torch.randn(1, 8, 8, 8),), tuning_logs=None)
    assert_same_as_torch(compiled, model, (x,))
    all_nan = torch.full((1, 8, 8, 8), float("nan"))
    assert np.isnan(compiled(all_nan.numpy())).all()


@pytest.mark.parametrize("name", ["lego_vgg16", pytest.param("lego_resnet50", marks=pytest.mark.slow)])
def test_zoo_models_keep_nan_like_pytorch_and_inf_like_the_lego_formula(name):
    model, x = get_model(name)
    compiled = lego_tvm.compile(model, (x,), tuning_logs=None)
    with_nan, with_inf = x.clone(), x.clone()
    with_nan[0, 0, 5, 5] = float("nan")
    assert_same_as_torch(compiled, model, (with_nan,))
    with_inf[0, 1, 7, 3] = float("inf")
    assert_same_as_torch(compiled, _lego_formula(model), (with_inf,))


def _lego_formula(model: nn.Module) -> nn.Module:
    """``model`` with every Lego layer computed as the Lego formula (gather, no dense merge)."""
    formula = copy.deepcopy(model)
    for name, module in list(formula.named_modules()):
        for child_name, child in list(module.named_children()):
            if is_lego_module(child):
                setattr(module, child_name, BatchFoldedLegoConv2d(child).eval())
    return formula.eval()


def test_an_inf_into_a_lego_layer_gives_what_the_lego_formula_gives():
    """The dense 1x1 merge of the authors' formulation multiplies every map by its one-hot
    weight, so an Inf map times 0 is NaN in every output channel; the Lego formula (and the
    fused kernel) reads only the chosen maps: Inf where a chosen map is Inf."""
    layer = lego_tvm.LegoConv2d(8, 8, 3).eval()
    x = torch.randn(1, 8, 6, 6)
    x[0, 1, 2, 2] = float("inf")
    compiled = lego_tvm.compile(layer, (torch.randn(1, 8, 6, 6),), tuning_logs=None)
    assert_same_as_torch(compiled, BatchFoldedLegoConv2d(layer).eval(), (x,))
    with torch.no_grad():
        assert np.isnan(layer(x).numpy()).sum() > np.isnan(compiled(x.numpy())).sum()


class MaxPool(nn.Module):
    def __init__(self, kernel, stride, padding, dilation, ceil_mode):
        super().__init__()
        self.args = (kernel, stride, padding, dilation, ceil_mode)

    def forward(self, x):
        return nn.functional.max_pool2d(x, *self.args)


@pytest.mark.parametrize("kernel, stride, padding, dilation, ceil_mode, size", [
    (3, 2, 1, 1, False, (112, 112)),      # ResNet's: two passes, vector lanes along a row
    (3, 2, 1, 1, True, (9, 10)),          # the last window reaches past the padding
    (2, 2, 0, 1, False, (8, 7)),          # VGG's, an odd width
    (3, 1, 1, 1, False, (5, 6)),
    ((3, 2), (1, 2), (1, 0), 1, True, (7, 9)),
    (3, 2, 1, 2, False, (11, 11)),        # dilated: the padded form, one reduction
])
def test_max_pool_is_exactly_pytorchs_with_nan_and_inf(kernel, stride, padding, dilation,
                                                       ceil_mode, size):
    model = MaxPool(kernel, stride, padding, dilation, ceil_mode).eval()
    x = torch.randn(2, 5, *size)
    x[0, 1, 0, 0] = x[1, 4, -1, -1] = float("nan")       # corners: windows over the padding
    x[0, 2, 3, 4], x[1, 0, 2, 2] = float("nan"), float("inf")
    x[0, 3] = float("-inf")                               # a whole channel of -inf
    compiled = lego_tvm.compile(model, (x,), tuning_logs=None)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_array_equal(np.asarray(compiled(x.numpy())), expected)   # NaN == NaN
