"""Lego maps stored pixels innermost (``LegoConvSpec.flat_pixels``) for 1x1 stride-1 layers:
where the pass chooses them, and the kernel against PyTorch in both loop structures, with
a register tile that leaves a predicate, on any x86 host (its own vector width)."""
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm import s_tir

from lego_tvm import LegoConv2d
from lego_tvm.backend import pipeline
from lego_tvm.backend.kernel_timing import random_inputs
from lego_tvm.op.fused_op import LegoConvSpec, lego_conv2d_prim_func, pack_bank
from lego_tvm.schedules.lego_cpu_flat import FlatLegoConfig, apply_flat_schedule, default_flat_config
from lego_tvm.schedules.simd import simd_profile
from lego_tvm.schedules.x86 import AVX512
from lego_tvm.support.accuracy import TOLERANCE, max_relative_error
from lego_tvm.support.targets import host_target, resolve_target

# 8 x 12 pixels: 96, a multiple of 8 and 16 lanes; tasks of 4 rows are 48 pixels.
SPEC = LegoConvSpec(batch=1, in_channels=32, height=8, width=12, out_channels=24, splits=2,
                    lego_filters=12, split_channels=16, kernel=(1, 1), stride=(1, 1),
                    padding=(0, 0, 0, 0), relu=True, bank_block=1, flat_pixels=True)


def reference(spec: LegoConvSpec, arrays: dict) -> np.ndarray:
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    b = spec.split_channels
    out = t["bias"][None, :, None, None].expand(t["out"].shape).clone()
    for i in range(spec.splits):
        maps = F.conv2d(t["x"][:, i * b:(i + 1) * b], t["bank"], padding=spec.padding[:2])
        out += t["coef"][i][None, :, None, None] * maps[:, t["index"][i].long()]
    if spec.has_residual:
        out += t["residual"]
    return torch.relu(out).numpy() if spec.relu else out.numpy()


def run_kernel(spec: LegoConvSpec, config: FlatLegoConfig, batch: int) -> tuple:
    target = host_target()
    sch = s_tir.Schedule(lego_conv2d_prim_func(spec).with_attr("global_symbol", "main"))
    apply_flat_schedule(sch, config)
    text = sch.mod["main"].script()
    kernel = tvm.compile(sch.mod, target=target).mod["main"]
    arrays = random_inputs(replace(spec, batch=batch), np.random.default_rng(1))
    args = dict(arrays, bank=pack_bank(arrays["bank"], 1))
    tensors = [tvm.runtime.tensor(a) for a in args.values()]
    kernel(*tensors)
    return tensors[-1].numpy(), reference(spec, arrays), text


@pytest.mark.parametrize("fuse_stages", [True, False], ids=["fused", "stage-by-stage"])
@pytest.mark.parametrize("residual,batch", [(True, 1), (False, 2)])
def test_flat_kernel_matches_torch(fuse_stages, residual, batch):
    spec = replace(SPEC, batch=batch, has_residual=residual)
    lanes = simd_profile(host_target()).lanes
    # 3 filters x 2 vectors: 48 or 96 pixels are not a whole number of 2-vector tiles.
    config = FlatLegoConfig(tile_rows=4, reg_filters=3, reg_vectors=2,
                            fuse_stages=fuse_stages, lanes=lanes)
    got, expected, text = run_kernel(spec, config, batch)
    assert max_relative_error(got, expected) < TOLERANCE
    assert "T.parallel(" in text and "T.vectorized(" in text


def test_flat_kernel_with_the_batch_chosen_at_call_time():
    spec = replace(SPEC, batch=None, has_residual=True)
    config = default_flat_config(spec, 2, simd_profile(host_target()))
    got, expected, _ = run_kernel(spec, config, batch=3)
    assert got.shape[0] == 3
    assert max_relative_error(got, expected) < TOLERANCE


def test_default_config_fuses_big_maps_and_stages_small_ones():
    def spec(c, n, size, m):
        return replace(SPEC, in_channels=c, out_channels=n, height=size, width=size,
                       split_channels=c // 2, lego_filters=m)
    big = default_flat_config(spec(64, 256, 56, 128), 2, AVX512)
    assert (big.fuse_stages, big.tile_rows, big.reg_filters, big.reg_vectors) == (True, 4, 4, 2)
    assert not default_flat_config(spec(128, 512, 28, 256), 2, AVX512).fuse_stages


class OneByOnes(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.reduce = LegoConv2d(32, 16, 1)
        self.mix = LegoConv2d(16, 16, 3)
        self.expand = LegoConv2d(16, 32, 1)

    def forward(self, x):
        return self.expand(torch.relu(self.mix(torch.relu(self.reduce(x))))) + x


@pytest.mark.parametrize("target,layout,size,flat", [
    ("x86-avx512", "NCHW", 8, [True, False, True]),       # 64 pixels: 4 vectors of 16
    ("x86-avx512", "NCHW", 7, [False, False, False]),     # 49 pixels
    ("x86-avx512", "NCHWc", 8, [False, False, False]),    # blocked layouts keep packed maps
    ("x86-avx2", "NCHW", 8, [False, False, False]),       # AVX2 keeps its tuned layout
])
def test_pass_stores_flat_maps_only_where_they_apply(target, layout, size, flat):
    model = OneByOnes().eval()
    x = torch.randn(1, 32, size, size)
    _, report = pipeline.import_and_fuse(model, (x,), resolve_target(target), layout=layout)
    assert [layer.spec.flat_pixels for layer in report.layers] == flat
    assert all(layer.spec.bank_block == 1 for layer in report.layers if layer.spec.flat_pixels)


def test_flat_spec_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="flat_pixels: not a 1x1 stride-1"):
        lego_conv2d_prim_func(replace(SPEC, kernel=(3, 3), padding=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match="bank_block 4, not 1"):
        lego_conv2d_prim_func(replace(SPEC, bank_block=4))
