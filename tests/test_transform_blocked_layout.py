"""NCHW[x]c between fused kernels (``layout="NCHWc"``): chains of kernels hand each other
blocked tensors, residuals included, every tensor another op reads stays NCHW, and the
outputs match PyTorch and the NCHW build."""
import numpy as np
import pytest
import torch

import lego_tvm
from conftest import assert_matches_torch
from lego_tvm.nn.lego_conv import LegoConv2d
from lego_tvm.support.targets import resolve_target, why_not_runnable_here
from models import bottlenecks


# Each blocked layout is checked on a target of its own, whatever the host: AVX2 blocks of 8
# channels, AVX-512 blocks of 16. A build whose vectors this CPU lacks is checked for its
# layouts only.
TARGETS = {"x86-avx2": 8, "x86-avx512": 16}


def runnable(target: str) -> bool:
    return why_not_runnable_here(resolve_target(target)) is None


def _layouts(compiled) -> list[str]:
    return [f"{layer.spec.in_block}>{layer.spec.out_block}"
            for layer in compiled.report.layers + compiled.report.dense_convs]


@pytest.mark.parametrize("target", TARGETS)
def test_resnet_blocks_pass_blocked_tensors_through_residuals(target):
    lanes = TARGETS[target]
    model, x = bottlenecks(lanes), torch.randn(1, 4 * lanes, 16, 16)
    blocked = lego_tvm.compile(model, (x,), target=target, layout="NCHWc", tuning_logs=None)
    # Block 1's conv1 and shortcut read the model's NCHW input, the last conv writes the
    # output; residuals (the shortcut, block 1's output) are carried blocked.
    one, both, last = f"1>{lanes}", f"{lanes}>{lanes}", f"{lanes}>1"
    layouts = _layouts(blocked)
    assert layouts == [one, both, both, both, both, both, one, last], layouts
    assert f"[NCHW{lanes}c -> NCHW{lanes}c]" in str(blocked.report)
    assert f"[NCHW -> NCHW{lanes}c]" in str(blocked.report)
    plain = lego_tvm.compile(model, (x,), target=target, tuning_logs=None)
    assert _layouts(plain) == ["1>1"] * 8
    if not runnable(target):
        pytest.skip(f"layouts checked; {target} code does not run on this CPU")
    assert_matches_torch(blocked, model, (x,))
    np.testing.assert_allclose(blocked(x.numpy()), plain(x.numpy()), rtol=1e-5, atol=1e-5)


def test_avx512_blocks_need_splits_of_16_channels():
    """A kernel reads blocks of one vector: splits of 8 channels do on AVX2 (above), not on
    AVX-512, where those kernels read NCHW."""
    model, x = bottlenecks(8), torch.randn(1, 32, 16, 16)
    compiled = lego_tvm.compile(model, (x,), target="x86-avx512", layout="NCHWc",
                                tuning_logs=None)
    layers = compiled.report.layers
    assert all(layer.spec.split_channels % 16 == 0 for layer in layers
               if layer.spec.in_block == 16)
    assert any(layer.spec.split_channels == 8 and layer.spec.in_block == 1 for layer in layers)


@pytest.mark.parametrize("target", TARGETS)
def test_dynamic_batch_and_small_maps_with_blocked_layouts(target):
    """4x4 maps: too few row tiles, so the stage-by-stage schedule runs the blocked input."""
    lanes = TARGETS[target]
    model = bottlenecks(lanes)
    compiled = lego_tvm.compile(model, (torch.randn(2, 4 * lanes, 8, 8),), target=target,
                                layout="NCHWc", dynamic_batch=True, tuning_logs=None)
    assert f"{lanes}>{lanes}" in _layouts(compiled)
    if not runnable(target):
        pytest.skip(f"layouts checked; {target} code does not run on this CPU")
    for batch in (1, 3):
        assert_matches_torch(compiled, model, (torch.randn(batch, 4 * lanes, 8, 8),))


def test_blocked_kernels_stay_on_tvm_with_onednn():
    pytest.importorskip("lego_tvm.backend.onednn")
    from lego_tvm.backend import onednn
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
