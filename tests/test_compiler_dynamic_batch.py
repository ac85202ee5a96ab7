"""A batch chosen at call time: ``compile(..., dynamic_batch=True)`` gives one module for any
batch size, with the Lego layers fused and exact for each."""
import numpy as np
import pytest
import torch
from torch import nn

import lego_tvm
from conftest import TOLERANCE
from lego_tvm.support.accuracy import max_relative_error
from lego_tvm.runtime import InputError
from models import LegoBlock, randomize_bn


class SmallLegoNet(nn.Module):
    """Lego layers (one strided, one with a residual), a dense conv, pooling, a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), randomize_bn(nn.BatchNorm2d(16)),
                                  nn.ReLU())
        self.down = LegoBlock(16, 32, 3, 2, 0.5, 2, "bn+relu")
        self.block = LegoBlock(32, 32, 3, 4, 0.5, 1, "bn+residual+relu")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        y = self.down(self.stem(x))
        return self.head(self.block(y, y))


@pytest.mark.parametrize("target", [None, "cuda-a100"])
def test_one_module_runs_any_batch(target):
    model = SmallLegoNet().eval()
    compiled = lego_tvm.compile(model, torch.randn(1, 3, 12, 12), target=target,
                                dynamic_batch=True, tuning_logs=None)
    assert len(compiled.report.layers) == 2
    assert all(layer.spec.batch is None for layer in compiled.report.layers)
    assert "MACs are per image" in str(compiled.report)
    assert compiled.inputs[0]["shape"] == [None, 3, 12, 12]
    if target is not None:
        return          # the CUDA build itself is the check here (no GPU to run it)
    for batch in (1, 2, 5, 16):
        x = torch.randn(batch, 3, 12, 12)
        with torch.no_grad():
            reference = model(x).numpy()
        out = compiled(x.numpy())
        assert out.shape == (batch, 10)
        assert max_relative_error(out, reference) <= TOLERANCE
    with pytest.raises(InputError, match=r"compiled for shape \['batch', 3, 12, 12\]"):
        compiled(np.zeros((2, 3, 11, 12), "float32"))


def test_dynamic_batch_model_exports_and_loads(tmp_path):
    model = LegoBlock(8, 8, 3, 2, 0.5, 1, "bn+relu").eval()
    compiled = lego_tvm.compile(model, torch.randn(2, 8, 6, 6), dynamic_batch=True,
                                tuning_logs=None)
    loaded = lego_tvm.load(compiled.export(str(tmp_path / "dyn.so")))
    x = torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        assert max_relative_error(loaded(x.numpy()), model(x).numpy()) <= TOLERANCE


@pytest.mark.slow
def test_lego_vgg16_with_a_batch_chosen_at_call_time():
    """Memory is planned per call: a symbolic batch with a huge upper bound once made the
    VM plan for the bound and fail (std::bad_alloc)."""
    from lego_tvm.nn.zoo import get_model

    model, x = get_model("lego_vgg16", batch=1)
    compiled = lego_tvm.compile(model, x, dynamic_batch=True, tuning_logs=None)
    assert len(compiled.report.layers) == 14
    for batch in (1, 3):
        xb = torch.randn(batch, *x.shape[1:])
        with torch.no_grad():
            assert max_relative_error(compiled(xb.numpy()), model(xb).numpy()) <= TOLERANCE
