"""Lego layers already folded into dense convs: the structure is recovered from the weights
alone (exactly by default, within a tolerance on request) and fused; anything else stays
an ordinary conv."""
import numpy as np
import pytest
import torch
from torch import nn

import lego_tvm
from conftest import TOLERANCE, assert_matches_torch
from lego_tvm.recognize.factor_weights import factor_weight
from lego_tvm.nn.fold import fold_lego_to_dense
from models import LegoBlock


def folded_weight(c, n, d, o, ratio) -> tuple[np.ndarray, nn.Module]:
    layer = lego_tvm.LegoConv2d(c, n, d, o, ratio).eval()
    return fold_lego_to_dense(nn.Sequential(layer))[0].weight.detach().numpy(), layer


def filters_used(layer) -> int:
    return len(set(layer.aux_combination.argmax(2)[..., 0, 0].flatten().tolist()))


@pytest.mark.parametrize("c,n,d,o,ratio", [(64, 64, 3, 2, 0.5), (48, 32, 1, 4, 0.25),
                                           (32, 64, 5, 2, 0.25), (256, 256, 3, 2, 0.5)])
def test_factorization_recovers_splits_and_filters_exactly(c, n, d, o, ratio):
    weight, layer = folded_weight(c, n, d, o, ratio)
    found = factor_weight(weight)
    assert found is not None and found.splits == o
    assert found.lego_filters == filters_used(layer)        # every filter some channel uses
    b = c // o
    rebuilt = np.concatenate([found.coef[i][:, None, None, None] * found.bank[found.index[i]]
                              for i in range(o)], axis=1)
    assert rebuilt.shape == weight.shape
    assert np.abs(rebuilt - weight).max() <= 1e-6 * np.abs(weight).max()
    assert b == found.bank.shape[1]


def test_generic_and_perturbed_weights_are_not_lego():
    rng = np.random.default_rng(0)
    assert factor_weight(rng.standard_normal((64, 64, 3, 3)).astype("float32")) is None
    weight, _ = folded_weight(64, 64, 3, 2, 0.5)
    noise = rng.standard_normal(weight.shape).astype("float32") * 1e-4 * np.abs(weight).max()
    assert factor_weight(weight + noise) is None                     # exact by default
    found = factor_weight(weight + noise, tolerance=1e-2)            # opt-in
    assert found is not None and found.splits == 2 and 0 < found.deviation <= 1e-2


class FoldedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = LegoBlock(16, 32, 3, 2, 0.5, 1, "bn+relu")
        self.b = LegoBlock(32, 32, 3, 4, 0.25, 2, "bn+residual+relu")
        self.c = LegoBlock(32, 24, 1, 2, 0.5, 1, "")

    def forward(self, x):
        y = self.a(x)
        return self.c(self.b(y, y[:, :, ::2, ::2]))


def test_a_dense_folded_network_is_fused_with_its_epilogues_and_exact():
    model = fold_lego_to_dense(FoldedNet().eval()).eval()
    assert not any(hasattr(m, "aux_combination") for m in model.modules())
    x = torch.randn(2, 16, 10, 10)
    compiled = lego_tvm.compile(model, (x,), tuning_logs=None)
    layers = compiled.report.layers
    assert [(l.spec.splits, l.spec.stride[0]) for l in layers] == [(2, 1), (4, 2), (2, 1)]
    assert all(l.form.startswith("dense-folded (recovered o=") for l in layers)
    assert [l.folded for l in layers] == [["batch_norm", "relu"],
                                          ["batch_norm", "residual_add", "relu"], []]
    assert "dense-folded (recovered o=4" in str(compiled.report)
    assert_matches_torch(compiled, model, (x,))


def test_perturbed_dense_weights_stay_dense_unless_a_tolerance_is_given():
    model = fold_lego_to_dense(LegoBlock(16, 16, 3, 2, 0.5, 1, "relu").eval()).eval()
    with torch.no_grad():
        weight = model.conv.weight
        weight.add_(torch.randn_like(weight) * 1e-4 * weight.abs().max())
    x = torch.randn(1, 16, 8, 8)
    exact = lego_tvm.compile(model, (x,), tuning_logs=None)
    assert exact.report.layers == [] and len(exact.report.dense_convs) == 1
    assert_matches_torch(exact, model, (x,))
    loose = lego_tvm.compile(model, (x,), tuning_logs=None, lego_weight_tolerance=1e-2)
    (layer,) = loose.report.layers
    assert "deviation" in layer.form
    with torch.no_grad():
        reference = model(x).numpy()
    error = np.abs(loose(x.numpy()) - reference).max() / np.abs(reference).max()
    assert TOLERANCE / 100 < error < 1e-1      # moved by about the accepted deviation


@pytest.mark.slow
def test_dense_folded_lego_vgg16_is_fused_layer_for_layer():
    from lego_tvm.nn.zoo import get_model

    model, x = get_model("lego_vgg16")
    dense = fold_lego_to_dense(model)
    compiled = lego_tvm.compile(dense, (x,), tuning_logs=None)
    assert len(compiled.report.layers) == 14
    assert all(l.spec.splits == 2 for l in compiled.report.layers)
    assert_matches_torch(compiled, dense, (x,))
