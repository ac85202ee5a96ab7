"""``torch.compile(model, backend="lego_tvm")``: the registered Dynamo backend gives eager's
results, fuses every Lego layer (the authors' module included), survives graph breaks, new
batch sizes and changed weights, and refuses bad options."""
import logging
import subprocess
import sys

import pytest
import torch
from torch import nn

import lego_tvm
from conftest import TOLERANCE
from lego_tvm.dynamo_backend import forget_graph_reports, graph_reports
from lego_tvm.support.accuracy import max_relative_error
from models import LegoBlock, randomize_bn
from reference_lego import AuthorsLegoConv2d


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    forget_graph_reports()
    yield
    torch._dynamo.reset()


def check(compiled, model, *inputs):
    with torch.no_grad():
        expected, got = model(*inputs), compiled(*inputs)
    assert got.shape == expected.shape
    err = max_relative_error(got.numpy(), expected.numpy())
    assert err <= TOLERANCE, f"max relative error {err:.3e}"


def fused_per_graph() -> list:
    """(Lego layers fused, skipped) per compiled shape, for every graph; None: ran eagerly."""
    return [None if g.eager_reason else [(len(r.layers), len(r.skipped))
                                         for r in g.reports.values()] for g in graph_reports()]


class AuthorsNet(nn.Module):
    """The authors' module, unmodified, between BatchNorm and ReLU and with a residual."""

    def __init__(self):
        super().__init__()
        self.a = AuthorsLegoConv2d(16, 32, 3, 2, 0.5)
        self.bn = randomize_bn(nn.BatchNorm2d(32))
        self.b = AuthorsLegoConv2d(32, 32, 3, 4, 0.25)

    def forward(self, x):
        y = torch.relu(self.bn(self.a(x)))
        return torch.relu(self.b(y) + y)


def test_registered_without_importing_lego_tvm():
    code = ("import torch, torch._dynamo as d; "
            "assert 'lego_tvm' in d.list_backends(exclude_tags=()); "
            "import sys; assert 'lego_tvm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_authors_module_is_fused_in_one_graph():
    model = AuthorsNet().eval()
    x = torch.randn(1, 16, 10, 10)
    compiled = torch.compile(model, backend="lego_tvm")
    check(compiled, model, x)
    assert fused_per_graph() == [[(2, 0)]]
    # The module's side effect happens too (the one-hot it stores on itself).
    assert torch.equal(model.a.proxy_combination.sum(2), torch.ones(2, 32, 1, 1))


def test_other_backends_still_break_the_authors_graph():
    """The relaxed requires_grad assignment applies to lego-tvm's frames only."""
    graphs = []

    def counting(gm, _inputs):
        graphs.append(gm)
        return gm.forward

    model = AuthorsNet().eval()
    x = torch.randn(1, 16, 10, 10)
    torch.compile(model, backend=counting)(x)
    assert len(graphs) > 1
    torch._dynamo.reset()
    torch.compile(model, backend="lego_tvm")(x)
    assert fused_per_graph() == [[(2, 0)]]


def test_zoo_vgg16_matches_eager():
    model, x = lego_tvm.get_model("lego_vgg16")
    check(torch.compile(model, backend="lego_tvm"), model, x)
    assert fused_per_graph() == [[(14, 0)]]


@pytest.mark.slow
def test_zoo_resnet50_matches_eager():
    model, x = lego_tvm.get_model("lego_resnet50")
    check(torch.compile(model, backend="lego_tvm"), model, x)
    assert fused_per_graph() == [[(48, 0)]]


class BrokenNet(nn.Module):
    """Two Lego blocks with a graph break between them, then an op lego-tvm refuses."""

    def __init__(self):
        super().__init__()
        self.first = LegoBlock(8, 16, 3, 2, 0.5, 1, "bn+relu")
        self.second = LegoBlock(16, 16, 3, 2, 0.5, 1, "bn+residual+relu")

    def forward(self, x):
        y = self.first(x)
        torch._dynamo.graph_break()
        y = self.second(y, y)
        torch._dynamo.graph_break()
        grid = torch.zeros(y.shape[0], 4, 4, 2) + 0.25
        return nn.functional.grid_sample(y, grid, align_corners=False)


def test_graph_breaks_each_graph_compiled_or_eager_with_reason(caplog):
    model = BrokenNet().eval()
    x = torch.randn(1, 8, 8, 8)
    with caplog.at_level(logging.WARNING, logger="lego_tvm"):
        check(torch.compile(model, backend="lego_tvm"), model, x)
    assert fused_per_graph() == [[(1, 0)], [(1, 0)], None]
    assert "grid_sample" in graph_reports()[2].eager_reason
    assert "runs eagerly" in caplog.text and "grid_sample" in caplog.text


def test_new_batch_size_compiles_once_with_a_symbolic_batch():
    model = AuthorsNet().eval()
    compiled = torch.compile(model, backend="lego_tvm")
    for batch in (1, 3, 5, 2):
        check(compiled, model, torch.randn(batch, 16, 10, 10))
    # Dynamo: a static graph for batch 1, one with a symbolic batch for the rest.
    assert fused_per_graph() == [[(2, 0)], [(2, 0)]]
    assert list(graph_reports()[1].reports) == ["all"]
    assert graph_reports()[1].reports["all"].layers[0].spec.batch is None


def test_dynamic_batch_false_compiles_each_shape():
    model = AuthorsNet().eval()
    compiled = torch.compile(model, backend="lego_tvm", options={"dynamic_batch": False})
    for batch in (1, 3, 5):
        check(compiled, model, torch.randn(batch, 16, 10, 10))
    assert fused_per_graph() == [[(2, 0)], [(2, 0), (2, 0)]]


def test_changed_weights_compile_again():
    model = AuthorsNet().eval()
    compiled = torch.compile(model, backend="lego_tvm")
    x = torch.randn(1, 16, 10, 10)
    check(compiled, model, x)
    with torch.no_grad():
        model.bn.running_mean.add_(0.5)                  # in place
        model.b.aux_combination.copy_(torch.randn_like(model.b.aux_combination))
    check(compiled, model, x)
    model.a.lego = nn.Parameter(torch.randn_like(model.a.lego))   # replaced
    check(compiled, model, x)


def test_training_mode_runs_eagerly_with_reason():
    model = LegoBlock(8, 16, 3, 2, 0.5, 1, "bn+relu").train()
    x = torch.randn(2, 8, 6, 6)
    out = torch.compile(model, backend="lego_tvm")(x)
    assert fused_per_graph() == [None]
    assert "in place" in graph_reports()[0].eager_reason
    assert "running_mean" in graph_reports()[0].eager_reason
    assert out.shape == (2, 16, 6, 6)


def test_graph_changing_its_input_runs_eagerly_and_changes_it():
    class ReluInPlace(nn.Module):
        def forward(self, x):
            return torch.relu_(x) * 2

    x = torch.randn(1, 3, 4, 4)
    expected = torch.relu(x) * 2
    out = torch.compile(ReluInPlace(), backend="lego_tvm")(x)
    assert fused_per_graph() == [None]
    assert "in place" in graph_reports()[0].eager_reason
    assert torch.equal(out, expected) and torch.equal(x, torch.relu(expected / 2))


def test_options_are_compile_keywords():
    model = LegoBlock(8, 16, 3, 2, 0.5, 1, "bn+relu").eval()
    x = torch.randn(1, 8, 6, 6)
    compiled = torch.compile(model, backend="lego_tvm",
                             options={"tuning_logs": None, "layout": "NCHWc", "fuse_lego": True})
    check(compiled, model, x)
    assert fused_per_graph() == [[(1, 0)]]
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"options \['tile'\] are not known.*target"):
        torch.compile(model, backend="lego_tvm", options={"tile": 8})(x)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="unknown target"):
        torch.compile(model, backend="lego_tvm", options={"target": "no-such-cpu"})(x)


def test_dynamic_true_compiles_with_float_attributes_written_in():
    """torch.compile(dynamic=True) passes float attributes (BatchNorm's eps and momentum) to
    the graph as 0-d tensors; they are frozen like weights, their values written in."""
    model = AuthorsNet().eval()
    compiled = torch.compile(model, backend="lego_tvm", dynamic=True)
    for batch in (1, 3):
        check(compiled, model, torch.randn(batch, 16, 10, 10))
    assert all(g.eager_reason is None for g in graph_reports()), graph_reports()
    assert all(layers == [(2, 0)] for layers in fused_per_graph())
