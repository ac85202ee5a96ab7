"""Both zoo models end to end: every Lego layer fused, output equal to PyTorch, the report's
totals as in LEGONET.md, and an exported library that runs in a process without torch."""
import json
import os

import numpy as np
import pytest
import torch

import lego_tvm
from conftest import (TOLERANCE, assert_matches_torch,
                      run_exported_without_torch)
from lego_tvm.support.accuracy import max_relative_error
from lego_tvm.support.targets import resolve_target, why_not_runnable_here
from lego_tvm.nn.zoo import get_model


@pytest.mark.parametrize("name", ["lego_vgg16", "lego_resnet50"])
def test_zoo_model_outputs_depend_on_the_input(name):
    """Whole-model checks only mean something if every layer reaches the output: an
    untrained model with made-up BatchNorm statistics once gave the same logits for any
    input, so a wrong early layer went unnoticed."""
    model, x = get_model(name)
    with torch.no_grad():
        outputs = [model(x), model(torch.randn_like(x)), model(torch.zeros_like(x))]
    scale = outputs[0].abs().max()
    assert scale > 0.1
    for other in outputs[1:]:
        assert (other - outputs[0]).abs().max() > 0.1 * scale


@pytest.fixture(scope="module")
def vgg():
    model, x = get_model("lego_vgg16")
    return model, x, lego_tvm.compile(model, (x,))


def test_vgg16_all_14_lego_layers_fused_and_exact(vgg):
    model, x, compiled = vgg
    assert len(compiled.report.layers) == 14 and compiled.report.skipped == []
    assert all(layer.folded == ["batch_norm", "relu"] for layer in compiled.report.layers)
    assert [layer.name for layer in compiled.report.layers][:2] == ["features.3", "features.6"]
    assert_matches_torch(compiled, model, (x,))


def test_vgg16_report_totals_agree_with_legonet_md(vgg):
    totals = vgg[2].report.totals
    assert (totals["lego_weights"], totals["dense_weights"]) == (3_723_264, 14_893_056)
    assert f"{totals['weight_ratio']:.2f}" == "4.00"
    assert round(totals["model_dense_macs"] / 1e6, 1) == 388.7
    assert round(totals["model_lego_macs"] / 1e6, 1) == 195.9
    assert f"{totals['model_mac_ratio']:.2f}" == "1.98"
    text = str(vgg[2].report)
    assert "features.46" in text and "4.00x smaller" in text and "(1.98x)" in text


def test_call_with_torch_returns_torch(vgg):
    model, x, compiled = vgg
    out = compiled(x)
    assert isinstance(out, torch.Tensor)
    with torch.no_grad():
        assert max_relative_error(out.numpy(), model(x).numpy()) <= TOLERANCE


def test_exported_library_runs_without_torch(vgg, tmp_path):
    model, x, compiled = vgg
    path = compiled.export(str(tmp_path / "vgg.so"))
    assert sorted(os.listdir(tmp_path)) == ["vgg.so", "vgg.so.json"]
    out = run_exported_without_torch(path, x.numpy(), tmp_path)
    np.testing.assert_array_equal(out, compiled(x.numpy()))
    with open(path + ".json") as f:
        assert len(json.load(f)["report"]["layers"]) == 14


@pytest.mark.slow
def test_resnet50_all_lego_layers_fused_and_exact():
    model, x = get_model("lego_resnet50")
    compiled = lego_tvm.compile(model, (x,))
    report = compiled.report
    assert len(report.layers) == 48 and report.skipped == []
    strides = {layer.spec.stride[0] for layer in report.layers}
    assert strides == {1, 2}
    residual = [layer for layer in report.layers if "residual_add" in layer.folded]
    assert len(residual) == 16                    # every bottleneck's conv3
    assert f"{report.totals['weight_ratio']:.2f}" == "4.00"
    assert_matches_torch(compiled, model, (x,))


@pytest.mark.slow
@pytest.mark.parametrize("target, lanes", [("x86-avx2", 8), ("x86-avx512", 16)])
def test_resnet50_with_blocked_layouts_is_exact(target, lanes):
    """NCHW[lanes]c between kernels: all but the last stage's residual chain (its output goes
    to the average pool) and the kernels beside the max-pool. Every split of ResNet-50 has a
    multiple of 16 channels, so AVX-512 blocks as many layers as AVX2."""
    model, x = get_model("lego_resnet50")
    compiled = lego_tvm.compile(model, (x,), target=target, layout="NCHWc", tuning_logs=None)
    layers = compiled.report.layers + compiled.report.dense_convs
    blocked_out = [layer for layer in layers if layer.spec.out_block == lanes]
    blocked_in = [layer for layer in layers if layer.spec.in_block == lanes]
    assert len(blocked_out) >= 40 and len(blocked_in) >= 40, (len(blocked_out), len(blocked_in))
    if why_not_runnable_here(resolve_target(target)) is not None:
        pytest.skip(f"layouts checked; {target} code does not run on this CPU")
    assert_matches_torch(compiled, model, (x,))
