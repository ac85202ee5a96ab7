"""FuseLegoConv2d, structurally: Before -> Expected, and near misses left untouched."""
import numpy as np
import pytest
import tvm
from tvm import relax

from graphs import fused_expected, lego_before, lego_parts
from lego_tvm import FuseLegoConv2d
from lego_tvm.op.fused_op import LegoConvSpec, pack_bank

X = (1, 8, 6, 6)


def run_pass(mod, lanes=8):
    """The split-conv recognition alone: these graphs' merge kernels and all-ones weights
    are, as dense convs, trivially Lego-structured (test_recognize_folded_weights.py covers that)."""
    fuse = FuseLegoConv2d(simd_lanes=lanes, weight_tolerance=None)
    return fuse(mod), fuse.report


def spec_for(bank, n, o, **kw):
    m, b, d, _ = bank.shape
    base = dict(batch=1, in_channels=X[1], height=X[2], width=X[3], out_channels=n, splits=o,
                lego_filters=m, split_channels=b, kernel=(d, d), stride=(1, 1),
                padding=(1, 1, 1, 1), bank_block=m)
    base.update(kw)
    return LegoConvSpec(**base)


def test_plain_lego_layer_becomes_one_fused_call():
    bank, merges, index, coef = lego_parts()
    after, report = run_pass(lego_before(X, bank, merges))
    expected = fused_expected(X, spec_for(bank, 6, 2),
                              [pack_bank(bank, 3), index, coef, np.zeros(6, "float32")])
    tvm.ir.assert_structural_equal(after, expected)
    assert len(report.layers) == 1 and report.layers[0].folded == []


def test_batchnorm_residual_relu_fold_into_the_epilogue():
    bank, merges, index, coef = lego_parts()
    rng = np.random.default_rng(1)
    gamma, beta, mean = (rng.standard_normal(6).astype("float32") for _ in range(3))
    var = rng.uniform(0.5, 2, 6).astype("float32")
    before = lego_before(X, bank, merges, bn=(gamma, beta, mean, var), residual=True, relu=True)
    after, report = run_pass(before)
    scale = gamma.astype("float64") / np.sqrt(var.astype("float64") + 1e-5)
    new_coef = (coef * scale[None, :]).astype("float32")
    bias = (0.0 * scale + beta.astype("float64") - mean * scale).astype("float32")
    spec = spec_for(bank, 6, 2, has_residual=True, relu=True)
    expected = fused_expected(X, spec, [pack_bank(bank, 3), index, new_coef, bias], residual=True)
    tvm.ir.assert_structural_equal(after, expected)
    assert report.layers[0].folded == ["batch_norm", "residual_add", "relu"]


def test_bank_is_packed_in_blocks_of_simd_lanes():
    bank, merges, index, coef = lego_parts(n=16, m=8)
    after, _ = run_pass(lego_before(X, bank, merges), lanes=4)
    expected = fused_expected(X, spec_for(bank, 16, 2, bank_block=4),
                              [pack_bank(bank, 4), index, coef, np.zeros(16, "float32")])
    tvm.ir.assert_structural_equal(after, expected)


def _two_hot(merges):
    merges = [m.copy() for m in merges]
    row = merges[1][2, :, 0, 0]
    row[(np.argmax(row != 0) + 1) % row.size] = 0.5
    return merges


def _dense_merge(merges):
    return [np.random.default_rng(3).standard_normal(m.shape).astype("float32") for m in merges]


NEAR_MISSES = {
    "two-hot merge row": (lambda b, m: dict(banks=b, merges=_two_hot(m)), "not one-hot"),
    "merge not one-hot": (lambda b, m: dict(banks=b, merges=_dense_merge(m)), "not one-hot"),
    "different banks": (lambda b, m: dict(banks=[b, b * 1.5], merges=m),
                        "different filter bank than split 0 (shape [3, 4, 3, 3] in both; 108 of "
                        "108 weights differ, the first at [0, 0, 0, 0]"),
    "overlapping slices": (lambda b, m: dict(banks=b, merges=m, slices=[(0, 4), (2, 6)]),
                           "reads channels [2, 6)"),
    "out-of-order slices": (lambda b, m: dict(banks=b, merges=m, slices=[(4, 8), (0, 4)]),
                            "reads channels [4, 8)"),
    "dilated conv": (lambda b, m: dict(banks=b, merges=m, dilation=2, padding=2), "dilation"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_miss_is_left_unchanged_with_a_reason(case):
    make, reason = NEAR_MISSES[case]
    bank, merges, _, _ = lego_parts()
    before = lego_before(X, **make(bank, merges))
    after, report = run_pass(before)
    tvm.ir.assert_structural_equal(after, relax.transform.DeadCodeElimination()(before))
    assert report.layers == []
    assert len(report.skipped) == 1 and reason in report.skipped[0].reason, report.skipped


def test_grouped_conv_is_left_unchanged():
    """A grouped bank conv is not a Lego layer; the pass must not touch it."""
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(X, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            part = bb.emit(relax.op.strided_slice(x, axes=[1], begin=[0], end=[4]))
            lego = bb.emit(relax.op.nn.conv2d(
                part, relax.const(rng.standard_normal((4, 2, 3, 3)).astype("float32")),
                padding=1, groups=2))
            merge = np.zeros((6, 4, 1, 1), "float32")
            merge[:, 0] = 1.0
            out = bb.emit(relax.op.nn.conv2d(lego, relax.const(merge)))
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    before = bb.get()
    after, report = run_pass(before)
    tvm.ir.assert_structural_equal(after, before)
    assert report.layers == [] and "groups=2" in report.skipped[0].reason


def test_unrelated_graph_is_untouched_and_silent():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(X, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(np.ones((4, 8, 3, 3), "float32"))))
            gv = bb.emit_output(bb.emit(relax.op.nn.relu(y)))
        bb.emit_func_output(gv)
    before = bb.get()
    after, report = run_pass(before)
    tvm.ir.assert_structural_equal(after, before)
    assert report.layers == [] and report.skipped == []
