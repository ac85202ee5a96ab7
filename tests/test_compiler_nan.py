"""NaN and Inf as PyTorch: ReLU (fused into a Lego kernel or not), ReLU6, clamp and max-pool
keep a NaN, checked position by position; an Inf into a Lego layer gives what the Lego
formula gives (docs/how-it-works.md, "NaN and Inf")."""
import numpy as np
import pytest
import torch
from torch import nn

import lego_tvm
from conftest import TOLERANCE
from lego_tvm.nn.lego_conv import BatchFoldedLegoConv2d
from lego_tvm.support.accuracy import max_relative_error
from lego_tvm.zoo import get_model
from models import EPILOGUES, LegoBlock, block_inputs


def assert_same_as_torch(compiled, model, inputs):
    """NaN where PyTorch has NaN, infinities alike, the finite values within tolerance."""
    with torch.no_grad():
        expected = model(*inputs).numpy()
    got = np.asarray(compiled(*[t.numpy() for t in inputs]))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    finite = np.isfinite(expected)
    if finite.any():
        assert max_relative_error(got[finite], expected[finite]) <= TOLERANCE


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


@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_a_nan_pixel_through_each_fused_epilogue(epilogue):
    block = LegoBlock(8, 8, 3, 2, 0.5, 1, epilogue).eval()
    inputs = block_inputs(block, 1, 8, 7)
    compiled = lego_tvm.compile(block, inputs, tuning_logs=None)
    x = inputs[0].clone()
    x[0, 1, 3, 3] = float("nan")
    assert_same_as_torch(compiled, block, (x, *inputs[1:]))


@pytest.mark.parametrize("name", ["lego_vgg16", pytest.param("lego_resnet50", marks=pytest.mark.slow)])
def test_zoo_models_keep_nan_like_pytorch(name):
    model, x = get_model(name)
    compiled = lego_tvm.compile(model, (x,), tuning_logs=None)
    x = x.clone()
    x[0, 0, 5, 5] = float("nan")
    assert_same_as_torch(compiled, model, (x,))


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
