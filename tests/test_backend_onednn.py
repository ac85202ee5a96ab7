"""The oneDNN compute-once backend: oneDNN computes the Lego feature maps, TVM the gather-sum
and epilogue. Numerics against PyTorch, the per-kernel choice, export, and refusals."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import lego_tvm
from conftest import assert_matches_torch, run_exported_without_torch
from lego_tvm import LegoConv2d
from lego_tvm.backend import compute_once, onednn
from lego_tvm.support.targets import PRESETS
from reference_lego import AuthorsLegoConv2d
from models import LegoBlock, block_inputs

# (c, n, kernel, splits, ratio, stride, batch, size, epilogue): blocks of 8 (AVX2), 4 and 1
# Lego filters, 1x1 / 3x3 / 5x5, strides, batches, every epilogue.
CASES = [(16, 16, 3, 2, 0.5, 1, 1, 9, "bn+relu"),
         (32, 32, 3, 4, 0.5, 2, 2, 12, "bn+residual+relu"),
         (24, 16, 1, 2, 0.25, 1, 1, 7, "bn"),
         (16, 12, 5, 2, 1.0 / 3, 1, 3, 8, "residual"),
         (12, 8, 3, 3, 0.125, 2, 1, 10, "relu"),
         (8, 16, 3, 1, 0.5, 1, 1, 6, "")]


@pytest.mark.parametrize("c,n,d,o,ratio,stride,batch,size,epilogue", CASES,
                         ids=[f"c{c[0]}-n{c[1]}-k{c[2]}-o{c[3]}-s{c[5]}-b{c[6]}-{c[8] or 'plain'}"
                              for c in CASES])
def test_onednn_maps_match_torch(c, n, d, o, ratio, stride, batch, size, epilogue):
    block = LegoBlock(c, n, d, o, ratio, stride, epilogue).eval()
    inputs = block_inputs(block, batch, c, size)
    compiled = lego_tvm.compile(block, inputs, compute_once="onednn")
    [layer] = compiled.report.layers
    assert compiled.report.backend_of(layer) == "onednn", compiled.report
    assert compiled.uses_onednn
    assert "oneDNN" in str(compiled.report)
    assert_matches_torch(compiled, block, inputs)


def test_auto_times_each_kernel_and_takes_onednn_only_when_clearly_faster():
    model = nn.Sequential(LegoConv2d(32, 32, 3, 2, 0.5), nn.ReLU(),
                          LegoConv2d(32, 64, 1, 2, 0.5, stride=1)).eval()
    x = torch.randn(1, 32, 16, 16)
    lines = []
    compiled = lego_tvm.compile(model, (x,), compute_once="auto", progress=lines.append)
    choices = compiled.report.compute_once
    check = compiled.report.compute_once_check
    any_faster = False
    for choice in choices:
        assert choice.tvm_ms > 0 and choice.onednn_ms > 0
        best_tvm = choice.tvm_ms
        if choice.winograd_ms and (min(choice.winograd_ms.values())
                                   < (1 - compute_once.WINOGRAD_MARGIN) * choice.tvm_ms):
            best_tvm = min(choice.winograd_ms.values())
        faster = choice.onednn_ms <= (1 - compute_once.ONEDNN_MARGIN) * best_tvm
        any_faster |= faster
        on_tvm = "tvm" if best_tvm == choice.tvm_ms else "winograd"
        if faster:
            # Then the whole model is timed both ways, and that decides; overruled, a kernel
            # goes back to its fastest TVM kernel, Winograd included.
            assert check["onednn_ms"] > 0 and check["tvm_only_ms"] > 0
            kept = check["onednn_ms"] < check["tvm_only_ms"]
            assert choice.backend == ("onednn" if kept else on_tvm)
            assert kept or "whole model was not" in choice.note
        else:
            assert choice.backend == on_tvm
    # One progress line per kernel, and one more when the whole model had to be timed (the
    # compile's phases have their own).
    timing = [line for line in lines if line.startswith("compute-once backend")]
    assert len(choices) == 2 and len(timing) == 2 + any_faster, lines
    assert lines[0] == "importing the model and fusing Lego layers"
    assert bool(check) == any_faster
    assert compiled.uses_onednn == any(c.backend == "onednn" for c in choices)
    assert "timed each way" in str(compiled.report)
    assert_matches_torch(compiled, model, (x,))


def test_layers_onednn_cannot_compute_stay_on_tvm():
    """The authors' module with 10 channels in 3 splits of 3: the last channel is unused,
    which the folded-batch oneDNN conv cannot express."""
    layer = AuthorsLegoConv2d(10, 8, 3, 3, 0.5).eval()
    x = torch.randn(1, 10, 8, 8)
    compiled = lego_tvm.compile(layer, (x,), compute_once="onednn")
    [choice] = compiled.report.compute_once
    assert choice.backend == "tvm" and "10 channels" in choice.note
    assert not compiled.uses_onednn
    assert_matches_torch(compiled, layer, (x,))


def test_dynamic_batch_on_onednn():
    block = LegoBlock(16, 16, 3, 2, 0.5, 1, "bn+relu").eval()
    compiled = lego_tvm.compile(block, (torch.randn(2, 16, 8, 8),), dynamic_batch=True,
                                compute_once="onednn")
    for batch in (1, 5):
        assert_matches_torch(compiled, block, (torch.randn(batch, 16, 8, 8),))


def test_exported_model_says_what_it_needs_and_loads_it(tmp_path):
    block = LegoBlock(16, 16, 3, 2, 0.5, 1, "bn+relu").eval()
    x = torch.randn(1, 16, 8, 8)
    compiled = lego_tvm.compile(block, (x,), compute_once="onednn")
    path = compiled.export(str(tmp_path / "m.so"))
    with open(path + ".json") as f:
        needs = json.load(f)["needs"]
    assert len(needs) == 1 and "oneDNN" in needs[0] and "libdnnl" in needs[0]
    out = run_exported_without_torch(path, x.numpy(), tmp_path)
    np.testing.assert_array_equal(out, compiled(x.numpy()))



def test_unknown_choice_and_other_targets_are_refused():
    block = LegoBlock(8, 8, 3, 2, 0.5, 1, "").eval()
    x = torch.randn(1, 8, 6, 6)
    with pytest.raises(ValueError, match="compute_once='fast'.*tvm, winograd, onednn, auto"):
        lego_tvm.compile(block, (x,), compute_once="fast")
    with pytest.raises(onednn.OneDNNUnavailable, match="own CPU only.*aarch64"):
        lego_tvm.compile(block, (x,), target="arm-cortex-a72", compute_once="onednn")
    auto = lego_tvm.compile(block, (x,), target=PRESETS["arm-cortex-a72"], compute_once="auto")
    assert [c.backend for c in auto.report.compute_once] == ["tvm"]


def test_missing_onednn_is_a_clear_error_and_auto_falls_back(tmp_path):
    script = textwrap.dedent("""
        import torch, lego_tvm
        from lego_tvm import LegoConv2d
        from lego_tvm.backend import onednn
        layer = LegoConv2d(8, 8, 3, 2, 0.5).eval()
        x = torch.randn(1, 8, 6, 6)
        try:
            lego_tvm.compile(layer, (x,), compute_once="onednn")
            raise SystemExit("no error")
        except onednn.OneDNNUnavailable as err:
            assert "not found under /nowhere" in str(err) and "libdnnl-dev" in str(err), err
        model = lego_tvm.compile(layer, (x,), compute_once="auto")
        assert [c.backend for c in model.report.compute_once] == ["tvm"]
        assert "not found" in str(model.report)
        print("OK")
    """)
    env = dict(os.environ, LEGO_TVM_ONEDNN_ROOT="/nowhere", LEGO_TVM_CACHE=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, timeout=300,
                            capture_output=True, text=True)
    assert result.stdout.strip().endswith("OK"), result.stderr[-2000:]


def test_auto_lets_the_whole_model_overrule_kernels_timed_alone(monkeypatch):
    """Kernels timed alone say oneDNN (forced here); the whole model, timed both ways for
    real, decides whether that stands, and the output is right either way."""
    # Direct and Winograd 1 ms each, oneDNN 0.5 ms.
    monkeypatch.setattr(compute_once, "_time_kernels",
                        lambda runs: [1.0] * (len(runs) - 1) + [0.5])
    model = nn.Sequential(LegoConv2d(16, 16, 3, 2, 0.5), nn.ReLU(),
                          LegoConv2d(16, 16, 3, 2, 0.5)).eval()
    x = torch.randn(1, 16, 12, 12)
    compiled = lego_tvm.compile(model, (x,), compute_once="auto")
    check = compiled.report.compute_once_check
    assert check["onednn_ms"] > 0 and check["tvm_only_ms"] > 0
    kept = check["onednn_ms"] < check["tvm_only_ms"]
    assert {c.backend for c in compiled.report.compute_once} == {"onednn" if kept else "tvm"}
    assert compiled.uses_onednn == kept
    assert "whole model:" in str(compiled.report)
    assert_matches_torch(compiled, model, (x,))
