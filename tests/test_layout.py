"""NCHW[x]c between fused kernels (``layout="NCHWc"``): chains of kernels hand each other
blocked tensors, residuals included, every tensor another op reads stays NCHW, and the
outputs match PyTorch and the NCHW build."""
import numpy as np
import pytest
import torch
from torch import nn

import lego_tvm
from conftest import assert_matches_torch
from lego_tvm.lego_conv import LegoConv2d
from lego_tvm.zoo import LegoBottleneck
from test_numeric import randomize_bn


def bottlenecks():
    """Two ResNet bottlenecks, a projection shortcut (stride 2) then an identity one, and an
    ordinary 1x1 conv after them."""
    model = nn.Sequential(LegoBottleneck(32, 16, 2, 2, 0.5), LegoBottleneck(64, 16, 1, 2, 0.5),
                          nn.Conv2d(64, 8, 1))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            randomize_bn(module)
    return model.eval()


def _layouts(compiled) -> list[str]:
    return [f"{layer.spec.in_block}>{layer.spec.out_block}"
            for layer in compiled.report.layers + compiled.report.dense_convs]


def test_resnet_blocks_pass_blocked_tensors_through_residuals():
    model, x = bottlenecks(), torch.randn(1, 32, 16, 16)
    blocked = lego_tvm.compile(model, (x,), layout="NCHWc", tuning_logs=None)
    # Block 1's conv1 and shortcut read the model's NCHW input, the last conv writes the
    # output; residuals (the shortcut, block 1's output) are carried blocked.
    layouts = _layouts(blocked)
    assert layouts == ["1>8", "8>8", "8>8", "8>8", "8>8", "8>8", "1>8", "8>1"], layouts
    assert "[NCHW8c -> NCHW8c]" in str(blocked.report)
    assert "[NCHW -> NCHW8c]" in str(blocked.report)
    assert_matches_torch(blocked, model, (x,))
    plain = lego_tvm.compile(model, (x,), tuning_logs=None)
    assert _layouts(plain) == ["1>1"] * 8
    np.testing.assert_allclose(blocked(x.numpy()), plain(x.numpy()), rtol=1e-5, atol=1e-5)


class ReadElsewhere(nn.Module):
    """conv1's output is also read by a mean (not a fused kernel); conv3 has 12 channels,
    not a multiple of 8; conv4 adds the model's input, which no kernel wrote."""

    def __init__(self):
        super().__init__()
        self.conv1 = LegoConv2d(16, 16, 3, 2, 0.5)
        self.conv2 = LegoConv2d(16, 12, 3, 2, 0.5)
        self.conv3 = LegoConv2d(12, 16, 3, 2, 0.5)
        self.conv4 = LegoConv2d(16, 16, 3, 2, 0.5)

    def forward(self, x):
        a = self.conv1(x)
        b = self.conv3(self.conv2(a)) + a.mean()
        return torch.relu(self.conv4(b) + x)


def test_tensors_other_ops_read_stay_nchw():
    model, x = ReadElsewhere().eval(), torch.randn(1, 16, 10, 10)
    compiled = lego_tvm.compile(model, (x,), layout="NCHWc", tuning_logs=None)
    assert len(compiled.report.layers) == 4
    assert _layouts(compiled) == ["1>1"] * 4
    assert_matches_torch(compiled, model, (x,))


def test_dynamic_batch_and_small_maps_with_blocked_layouts():
    """4x4 maps: too few row tiles, so the stage-by-stage schedule runs the blocked input."""
    model = bottlenecks()
    compiled = lego_tvm.compile(model, (torch.randn(2, 32, 8, 8),), layout="NCHWc",
                                dynamic_batch=True, tuning_logs=None)
    assert "8>8" in _layouts(compiled)
    for batch in (1, 3):
        assert_matches_torch(compiled, model, (torch.randn(batch, 32, 8, 8),))


def test_blocked_kernels_stay_on_tvm_with_onednn():
    pytest.importorskip("lego_tvm.onednn")
    from lego_tvm import onednn
    if onednn.why_unavailable():
        pytest.skip(onednn.why_unavailable())
    model, x = bottlenecks(), torch.randn(1, 32, 16, 16)
    compiled = lego_tvm.compile(model, (x,), layout="NCHWc", compute_once="onednn",
                                tuning_logs=None)
    notes = {c.kernel: (c.backend, c.note) for c in compiled.report.compute_once}
    for layer in compiled.report.layers:
        backend, note = notes[layer.kernel]
        blocked = (layer.spec.in_block, layer.spec.out_block) != (1, 1)
        assert backend == ("tvm" if blocked else "onednn"), (layer.name, note)
        assert not blocked or "blocked" in note
    assert_matches_torch(compiled, model, (x,))


def test_layout_choices_are_checked():
    layer, x = LegoConv2d(8, 8, 3, 2, 0.5).eval(), torch.randn(1, 8, 6, 6)
    with pytest.raises(ValueError, match="layout='NHWC': choose one of NCHW, NCHWc"):
        lego_tvm.compile(layer, (x,), layout="NHWC")
    with pytest.raises(ValueError, match="blocked layouts are for CPU targets"):
        lego_tvm.compile(layer, (x,), target="cuda-h100", layout="NCHWc")
