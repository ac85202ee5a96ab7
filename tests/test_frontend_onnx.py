"""ONNX in: ``lego_tvm.compile("model.onnx")`` or an ``onnx.ModelProto``, and ``lego-tvm
compile model.onnx``. The Lego layers are found in ONNX-imported graphs exported by both of
torch's exporters, from Lego modules (ours and the authors') and dense-folded."""
import builtins

import pytest
import torch
from torch import nn

import lego_tvm
from conftest import assert_matches_torch
from lego_tvm.cli import main
from lego_tvm.frontend.pytorch import ModelImportError
from lego_tvm.nn.fold import fold_lego_to_dense
from lego_tvm.zoo import get_model
from reference_lego import AuthorsLegoConv2d

onnx = pytest.importorskip("onnx")   # an optional extra; CI installs it ([bench])


def small_lego_net():
    return nn.Sequential(lego_tvm.LegoConv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.MaxPool2d(2), lego_tvm.LegoConv2d(16, 16, 3, 4, 0.25), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 16, 10)).eval()


def export(model, x, path, dynamo: bool):
    if dynamo:
        torch.onnx.export(model, (x,), str(path), dynamo=True)
    else:
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17)
    return str(path)


CASES = {"ours": (small_lego_net, 2), "dense-folded": (lambda: fold_lego_to_dense(small_lego_net()), 2),
         "authors' module": (lambda: nn.Sequential(AuthorsLegoConv2d(8, 16, 3, 2, 0.5), nn.ReLU(),
                                                   AuthorsLegoConv2d(16, 16, 3, 4, 0.25)).eval(), 2)}


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy exporter", "dynamo exporter"])
@pytest.mark.parametrize("case", list(CASES))
def test_lego_layers_are_fused_from_onnx_and_match_torch(case, dynamo, tmp_path):
    make, layers = CASES[case]
    model = make()
    x = torch.randn(1, 8, 8, 8)
    path = export(model, x, tmp_path / "model.onnx", dynamo)
    compiled = lego_tvm.compile(path, tuning_logs=None)          # shapes read from the file
    assert len(compiled.report.layers) == layers, compiled.report
    assert_matches_torch(compiled, model, (x,))
    from_proto = lego_tvm.compile(onnx.load(path), (x,), tuning_logs=None)
    assert len(from_proto.report.layers) == layers


def test_zoo_vgg_from_onnx_fuses_all_14_layers(tmp_path):
    model, x = get_model("lego_vgg16")
    compiled = lego_tvm.compile(export(model, x, tmp_path / "vgg.onnx", False), tuning_logs=None)
    assert len(compiled.report.layers) == 14
    assert_matches_torch(compiled, model, (x,))


def test_cli_compiles_an_onnx_file_and_checks_it_against_onnx_runtime(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = export(small_lego_net(), torch.randn(1, 8, 8, 8), tmp_path / "m.onnx", False)
    main(["compile", path, "-o", str(tmp_path / "m.so")])
    out = capsys.readouterr().out
    assert "Lego layers rewritten: 2" in out and "check against ONNX Runtime" in out
    assert "(ok)" in out and (tmp_path / "m.so").exists()


def test_onnx_errors_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(ModelImportError, match="does not exist"):
        lego_tvm.compile(str(tmp_path / "missing.onnx"))
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(ModelImportError, match="is not an ONNX model"):
        lego_tvm.compile(str(tmp_path / "text.onnx"))
    model = small_lego_net()
    open_batch = tmp_path / "open.onnx"
    torch.onnx.export(model, (torch.randn(1, 8, 8, 8),), str(open_batch), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    with pytest.raises(ModelImportError, match=r"ONNX input x has shape \['batch', 8, 8, 8\]"):
        lego_tvm.compile(str(open_batch))
    x = torch.randn(3, 8, 8, 8)
    assert_matches_torch(lego_tvm.compile(str(open_batch), (x,), tuning_logs=None), model, (x,))
    with pytest.raises(ModelImportError, match=r"takes 1 input\(s\) \(x\), 2 example input"):
        lego_tvm.compile(str(open_batch), (x, x))
    with pytest.raises(ValueError, match="dynamic_batch=True is for PyTorch models"):
        lego_tvm.compile(str(open_batch), (x,), dynamic_batch=True)
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (
        (_ for _ in ()).throw(ImportError(name)) if name == "onnx" else real_import(name, *a, **k)))
    with pytest.raises(ModelImportError, match=r"pip install 'lego-tvm\[onnx\]'"):
        lego_tvm.compile(str(open_batch), (x,))
