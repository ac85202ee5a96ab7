"""The Winograd compute-once stage (``op/winograd.py``, ``schedules/lego_cpu_winograd.py``)
against PyTorch: the fused kernel alone over a grid of sizes (odd ones, maps smaller than a
tile, three splits, residual, a batch chosen at call time), then whole models compiled with
``compute_once="winograd"`` and ``"auto"``."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from tvm import s_tir

import lego_tvm
from lego_tvm import LegoConv2d
from lego_tvm.backend import compute_once
from lego_tvm.backend.kernel_timing import kernel_arguments, random_inputs
from lego_tvm.check import error_against_torch
from lego_tvm.op import winograd
from lego_tvm.op.fused_op import LegoConvSpec, lego_conv2d_prim_func, winograd_unsupported
from lego_tvm.schedules.lego_cpu import default_config, tunable_schedules
from lego_tvm.schedules.lego_cpu_winograd import WinogradConfig, apply_winograd_schedule
from lego_tvm.schedules.simd import simd_profile
from lego_tvm.support.accuracy import TOLERANCE, max_relative_error
from lego_tvm.support.targets import host_target

import tvm
from test_schedules_flat_maps import reference


def spec_of(c, n, o, m, h, w, block, **extra) -> LegoConvSpec:
    return LegoConvSpec(batch=1, in_channels=c, height=h, width=w, out_channels=n, splits=o,
                        lego_filters=m, split_channels=c // o, kernel=(3, 3), stride=(1, 1),
                        padding=(1, 1, 1, 1), bank_block=block, **extra)


def run(spec: LegoConvSpec, config: WinogradConfig | None = None, batch: int = 1,
        sch: s_tir.Schedule | None = None) -> float:
    """The kernel's max error / max |output| against PyTorch on random inputs."""
    if sch is None:
        sch = s_tir.Schedule(lego_conv2d_prim_func(spec).with_attr("global_symbol", "main"))
        apply_winograd_schedule(sch, config or default_config(spec, 2, simd_profile(host_target())))
    kernel = tvm.compile(sch.mod, target=host_target()).mod["main"]
    concrete = replace(spec, batch=batch)
    arrays = random_inputs(concrete, np.random.default_rng(3))
    args = [tvm.runtime.tensor(a) for a in kernel_arguments(concrete, np.random.default_rng(3))]
    kernel(*args)
    return max_relative_error(args[-1].numpy(), reference(spec, arrays))


GRID = [  # c, n, o, m, h, w, bank block, extra
    (16, 16, 2, 8, 8, 8, 8, {"relu": True}),
    (16, 24, 2, 16, 7, 9, 16, {"has_residual": True, "relu": True}),   # odd, not whole tiles
    (12, 8, 3, 4, 5, 5, 4, {}),                       # three splits, smaller than an F(4) tile
    (32, 32, 2, 16, 1, 1, 16, {"relu": True}),        # one pixel
    (16, 16, 2, 16, 13, 11, 16, {"has_residual": True}),
]


@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize("case", GRID, ids=lambda c: "x".join(map(str, c[:6])))
def test_winograd_kernel_matches_torch(case, tile):
    *shape, block, extra = case
    spec = replace(spec_of(*shape, block, **extra), winograd=tile)
    assert run(spec) < TOLERANCE


@pytest.mark.parametrize("task_rows", [0, 1, 2], ids=["stage-by-stage", "1 row", "2 rows"])
def test_winograd_task_structures_and_register_tiles(task_rows):
    spec = replace(spec_of(16, 16, 2, 32, 12, 10, 8, relu=True), winograd=2, batch=2)
    # 6 rows of 5 tiles: 2 filter blocks x 1 row x 5 tiles (a register tile of odd width).
    config = WinogradConfig(tile=2, reg_filters=2, reg_rows=1, reg_cols=5, task_rows=task_rows)
    assert run(spec, config, batch=2) < TOLERANCE


def test_winograd_with_the_batch_chosen_at_call_time():
    spec = replace(spec_of(16, 16, 2, 16, 9, 9, 16, relu=True), winograd=4, batch=None)
    assert run(spec, batch=3) < TOLERANCE


def test_winograd_tuning_space_applies_and_stays_correct():
    spec = replace(spec_of(16, 16, 2, 16, 8, 8, 16), winograd=2)
    func = lego_conv2d_prim_func(spec).with_attr("global_symbol", "main")
    [space] = tunable_schedules(s_tir.Schedule(func), spec, host_target())
    # Replay the space with other sampled register tiles.
    for seed in range(1, 4):
        sch = s_tir.Schedule(func, seed=seed)
        space.trace.apply_to_schedule(sch, remove_postproc=True,
                                      decision_provider=lambda inst, *_: None)
        assert run(spec, sch=sch) < TOLERANCE


def test_bank_transform_is_g_g_gt():
    bank = np.random.default_rng(0).standard_normal((32, 3, 3, 3)).astype(np.float32)
    _, _, g = winograd.matrices(4)
    u = winograd.transform_bank(bank, 4, 16)
    assert u.shape == (6, 6, 2, 3, 16)
    np.testing.assert_allclose(u[:, :, 1, 2, 5], g @ bank[21, 2] @ g.T, rtol=1e-5, atol=1e-6)


def test_winograd_applies_only_to_3x3_stride_1_nchw():
    base = spec_of(16, 16, 2, 8, 8, 8, 8)
    assert winograd_unsupported(base) is None
    assert "3x3 stride-1" in winograd_unsupported(replace(base, stride=(2, 2)))
    assert "3x3 stride-1" in winograd_unsupported(replace(base, kernel=(1, 1)))
    assert "NCHW[x]c" in winograd_unsupported(replace(base, in_block=8))
    with pytest.raises(ValueError, match="winograd: not a 3x3 stride-1"):
        lego_conv2d_prim_func(replace(base, stride=(2, 2), winograd=2))
    with pytest.raises(ValueError, match="Winograd tile 3"):
        winograd.matrices(3)


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(LegoConv2d(32, 32, 3, 2, 0.5), nn.BatchNorm2d(32), nn.ReLU(),
                          LegoConv2d(32, 64, 3, 2, 0.5, stride=2), nn.ReLU(),
                          LegoConv2d(64, 64, 1, 2, 0.5), nn.ReLU(),
                          LegoConv2d(64, 64, 3, 4, 0.25), nn.BatchNorm2d(64)).eval()
    for bn in (model[1], model[8]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return model


def test_compile_with_winograd_runs_the_3x3_stride_1_layers_by_winograd():
    model, x = _model(), torch.randn(1, 32, 17, 16)
    compiled = lego_tvm.compile(model, (x,), compute_once="winograd")
    backends = [compiled.report.backend_of(layer) for layer in compiled.report.layers]
    assert backends == ["winograd", "tvm", "tvm", "winograd"], compiled.report
    text = str(compiled.report)
    assert "[maps: Winograd F(4x4, 3x3)]" in text and "not a 3x3 stride-1" in text
    assert "[maps: Winograd F(2x2, 3x3)]" in text     # the last layer's output is 9x8
    assert error_against_torch(compiled, model, (x,)) < TOLERANCE
    # Below 16x16 outputs, F(2x2, 3x3).
    small = lego_tvm.compile(model, (torch.randn(1, 32, 15, 13),), compute_once="winograd")
    assert [c.winograd for c in small.report.compute_once if c.backend == "winograd"] == [2, 2]


def test_auto_times_winograd_and_keeps_it_only_when_clearly_faster():
    model, x = _model(), torch.randn(2, 32, 16, 16)
    compiled = lego_tvm.compile(model, (x,), compute_once="auto")
    for choice in compiled.report.compute_once:
        assert choice.tvm_ms > 0
        if not choice.winograd_ms:
            assert choice.backend in ("tvm", "onednn") and "not Winograd" in choice.note
            continue
        assert set(choice.winograd_ms) == set(winograd.TILES)
        tile, best = min(choice.winograd_ms.items(), key=lambda item: item[1])
        if choice.backend == "winograd":
            assert choice.winograd == tile
            assert best < (1 - compute_once.WINOGRAD_MARGIN) * choice.tvm_ms
        elif choice.backend == "tvm":
            assert best >= (1 - compute_once.WINOGRAD_MARGIN) * choice.tvm_ms
    assert "timed each way" in str(compiled.report)
    assert error_against_torch(compiled, model, (x,)) < TOLERANCE


def test_winograd_is_refused_where_it_cannot_run():
    model, x = _model(), torch.randn(1, 32, 8, 8)
    with pytest.raises(ValueError, match="compute_once='winograd'.*CPU schedules only"):
        lego_tvm.compile(model, (x,), target="nvidia/nvidia-h100", compute_once="winograd")
    with pytest.raises(ValueError, match="tvm, winograd, onednn, auto"):
        lego_tvm.compile(model, (x,), compute_once="fast")


def test_overruled_onednn_goes_back_to_the_fastest_tvm_kernel():
    """A kernel where Winograd beat the direct conv and oneDNN beat both alone runs by
    Winograd when the whole model overrules oneDNN."""
    choice = compute_once.KernelChoice("k", "onednn", tvm_ms=1.0, onednn_ms=0.3,
                                       winograd_ms={2: 0.8, 4: 0.6})
    fallback = compute_once.without_onednn(choice)
    assert (fallback.backend, fallback.winograd) == ("winograd", 4)
    close = compute_once.KernelChoice("k", "onednn", tvm_ms=1.0, onednn_ms=0.3,
                                      winograd_ms={2: 0.97, 4: 0.99})
    assert compute_once.without_onednn(close).backend == "tvm"       # within the margin
    forced = compute_once.KernelChoice("k", "onednn")                # nothing timed
    assert compute_once.without_onednn(forced).backend == "tvm"


def test_an_overruled_kernel_keeps_why_it_was_not_winograd():
    choice = compute_once.KernelChoice("k", "onednn", tvm_ms=1.0, onednn_ms=0.3,
                                       note="not Winograd: not a 3x3 stride-1 convolution; "
                                            "oneDNN jit:avx512")
    compute_once.overrule_onednn(choice, compute_once.without_onednn(choice), "model slower")
    assert choice.backend == "tvm"
    assert choice.note == "not Winograd: not a 3x3 stride-1 convolution; model slower"
