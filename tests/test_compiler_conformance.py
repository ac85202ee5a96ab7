"""Models plain TVM compiles must compile with lego-tvm too, and match PyTorch: ops TVM
imports only after PyTorch's decompositions, ops it dispatches to library kernels, epilogues
our generic rule must not inline, and the fallback to TVM's default schedule."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lego_tvm
from conftest import assert_matches_torch
from corpus import Op
from lego_tvm.backend import pipeline
from lego_tvm.frontend.pytorch import ModelImportError
from lego_tvm.schedules import cpu_generic


def lego_gelu_head():
    return nn.Sequential(lego_tvm.LegoConv2d(8, 16, 3), nn.Flatten(), nn.Linear(16 * 36, 10),
                         nn.GELU())


def convnext_block():
    class Block(nn.Module):
        def __init__(self, c=16):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
            self.norm = nn.LayerNorm(c)
            self.up, self.down = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

        def forward(self, x):
            y = self.norm(self.dw(x).permute(0, 2, 3, 1))
            return x + self.down(F.gelu(self.up(y))).permute(0, 3, 1, 2)
    return Block()


# name: (module, input shape); the first three blocks are the failures found by issue 16.
CASES = {
    "conv padding='same'": (lambda: nn.Conv2d(8, 8, 3, padding="same"), (1, 8, 6, 6)),
    "Mish": (lambda: nn.Mish(), (2, 8, 5, 5)),
    "PixelUnshuffle": (lambda: nn.PixelUnshuffle(2), (1, 4, 6, 6)),
    "ChannelShuffle": (lambda: nn.ChannelShuffle(2), (1, 8, 3, 3)),
    "PixelShuffle": (lambda: nn.PixelShuffle(2), (1, 8, 3, 3)),
    "antialiased bilinear upsampling": (lambda: Op(lambda x: F.interpolate(
        x, scale_factor=2, mode="bilinear", antialias=True)), (1, 3, 4, 4)),
    "topk": (lambda: Op(lambda x: torch.topk(x, 3, dim=-1).values), (2, 10)),
    "cumsum": (lambda: Op(lambda x: torch.cumsum(x, dim=1)), (2, 10)),
    "max over a dim": (lambda: Op(lambda x: torch.max(x, dim=1).values), (2, 10)),
    "MLP with GELU (erf)": (lambda: nn.Sequential(nn.Linear(10, 32), nn.GELU(),
                                                  nn.Linear(32, 4)), (2, 10)),
    "SiLU after Linear": (lambda: nn.Sequential(nn.Linear(10, 32), nn.SiLU()), (2, 10)),
    "SiLU after depthwise conv": (lambda: nn.Sequential(nn.Conv2d(8, 8, 3, groups=8),
                                                        nn.SiLU()), (1, 8, 6, 6)),
    "ConvNeXt block": (convnext_block, (1, 16, 8, 8)),
    "Lego layer with a GELU head": (lego_gelu_head, (1, 8, 6, 6)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_model_plain_tvm_compiles_compiles_and_matches_torch(name):
    make, shape = CASES[name]
    model = make().eval()
    inputs = (torch.randn(*shape),)
    compiled = lego_tvm.compile(model, inputs, tuning_logs=None)
    assert_matches_torch(compiled, model, inputs)
    # Only TVM's own sort / scan kernels (topk, cumsum) are left to TVM's default schedule.
    assert all(f.reason == "no lego-tvm schedule rule matches it"
               for f in compiled.report.fallbacks)


def test_antialiased_downsampling_tvm_computes_wrongly_is_refused():
    model = Op(lambda x: F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True))
    with pytest.raises(ModelImportError, match="antialias=True.*downsamples"):
        lego_tvm.compile(model.eval(), torch.randn(1, 3, 8, 8), tuning_logs=None)


def test_a_generic_rule_that_fails_falls_back_to_tvm_default(monkeypatch):
    def broken(self, func, target, tunable):
        raise RuntimeError("rule made to fail")
    monkeypatch.setattr(cpu_generic.ParallelInjective, "apply", broken)
    model = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Hardswish(), nn.Flatten()).eval()
    inputs = (torch.randn(1, 8, 6, 6),)
    compiled = lego_tvm.compile(model, inputs, tuning_logs=None)
    assert_matches_torch(compiled, model, inputs)
    assert compiled.report.fallbacks
    assert all("ParallelInjective: rule made to fail" in f.reason
               for f in compiled.report.fallbacks)
    assert "TVM's default schedule for" in str(compiled.report)


def test_a_generic_schedule_that_does_not_build_falls_back(monkeypatch):
    real = cpu_generic.ParallelInjective.apply

    def unbuildable(self, func, target, tunable):
        sch = real(self, func, target, tunable)
        if sch is not None:     # a GPU thread binding: LLVM cannot build it
            block = sch.get_child_blocks(sch.get_sblock("root"))[-1]
            sch.bind(sch.get_loops(block)[0], "threadIdx.x")
        return sch
    monkeypatch.setattr(cpu_generic.ParallelInjective, "apply", unbuildable)
    model = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Hardswish(), nn.Flatten()).eval()
    inputs = (torch.randn(1, 8, 6, 6),)
    compiled = lego_tvm.compile(model, inputs, tuning_logs=None)
    assert_matches_torch(compiled, model, inputs)
    assert any("does not build" in f.reason for f in compiled.report.fallbacks)


def test_a_lego_kernel_without_a_schedule_is_an_error(monkeypatch):
    from lego_tvm.schedules import lego_cpu
    for rule in (lego_cpu.FusedLegoRule, cpu_generic.TiledReduction, cpu_generic.ParallelInjective):
        monkeypatch.setattr(rule, "apply", lambda *args: None)
    model = lego_tvm.LegoConv2d(8, 16, 3).eval()
    with pytest.raises(pipeline.UnscheduledError, match="fused Lego kernel"):
        lego_tvm.compile(model, torch.randn(1, 8, 6, 6), tuning_logs=None)
