"""A careless or hostile user's probes (issue 20): each gets a clear error naming the
problem, nothing is changed behind the user's back, and the CLI prints one line."""
import json

import numpy as np
import pytest
import torch

import lego_tvm
from lego_tvm import LegoConv2d
from lego_tvm.cli import main
from lego_tvm.runtime import InputError
from lego_tvm.support.targets import TargetError, resolve_target
from lego_tvm.tuning.logs import MANIFEST, TuningLogError, read_manifest
from models import randomize_bn


def small():
    return LegoConv2d(8, 8, 3, 2, 0.5).eval(), torch.randn(1, 8, 6, 6)


@pytest.mark.parametrize("model,inputs,message", [
    (LegoConv2d(8, 8, 3, 2, 0.5), None, "example_inputs is None"),
    (lambda x: x, torch.randn(1, 8, 6, 6), "model is a function; compile takes a torch.nn.Module"),
])
def test_compile_names_a_wrong_argument(model, inputs, message):
    with pytest.raises(TypeError, match=message):
        lego_tvm.compile(model, inputs)


def test_compile_names_a_wrong_tuning_logs_argument():
    layer, x = small()
    with pytest.raises(TypeError, match=r"tuning_logs=42: give 'auto', None, a folder"):
        lego_tvm.compile(layer, (x,), tuning_logs=42)


def test_a_train_mode_model_is_compiled_as_in_eval_mode_and_left_unchanged():
    model = torch.nn.Sequential(LegoConv2d(8, 8, 3, 2, 0.5), torch.nn.BatchNorm2d(8))
    randomize_bn(model[1])
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 8, 6, 6)
    with pytest.warns(UserWarning, match="training mode; lego-tvm compiles it as in eval mode"):
        compiled = lego_tvm.compile(model, (x,), tuning_logs=None)
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    with torch.no_grad():
        reference = model.eval()(x).numpy()
    np.testing.assert_allclose(compiled(x.numpy()), reference, rtol=1e-4, atol=1e-5)


def test_a_bfloat16_input_is_an_input_error():
    layer, x = small()
    compiled = lego_tvm.compile(layer, (x,), tuning_logs=None)
    with pytest.raises(InputError, match="dtype torch.bfloat16; the model was compiled for "
                                         "float32"):
        compiled(x.to(torch.bfloat16))


def test_an_unknown_cpu_name_is_refused_with_the_names_llvm_knows():
    with pytest.raises(TargetError, match="LLVM does not know the CPU 'bogus-cpu'.*znver3"):
        resolve_target({"kind": "llvm", "mcpu": "bogus-cpu"})


def test_a_manifest_that_is_not_an_object_is_a_tuning_log_error(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps([1, 2]))
    with pytest.raises(TuningLogError, match="is not a tuning-log manifest"):
        read_manifest(tmp_path)


def test_tune_refuses_negative_trials_and_a_file_as_log_folder(tmp_path):
    layer, x = small()
    with pytest.raises(ValueError, match="trials must be a whole number >= 0"):
        lego_tvm.tune(layer, x, tmp_path / "log", trials=-5)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="must be a folder; it is a file"):
        lego_tvm.tune(layer, x, tmp_path / "file", trials=1)


@pytest.mark.parametrize("argv,message", [
    (["compile", "lego_vgg16", "--target", "{kind: llvm}"], "is not valid JSON"),
    (["compile", "lego_vgg16", "-o", "nodir/m.so", "--no-check"], "not a writable folder"),
    (["compile", "lego_vgg16", "--tuning-logs", "no_such_log", "--no-check"],
     "is not a lego-tvm tuning log"),
    (["compile", "."], "is neither a zoo model nor an existing .pt2 file"),
    (["compile", "lego_vgg16", "--target", '{"kind": "llvm", "mcpu": "bogus-cpu"}'],
     "LLVM does not know the CPU"),
])
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    text = str(exit_info.value.code)
    assert text.startswith("lego-tvm: ") and message in text and "\n" not in text, text


def test_cli_refuses_a_text_file_named_pt2(capsys, tmp_path):
    (tmp_path / "m.pt2").write_text("not a program")
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", str(tmp_path / "m.pt2")])
    assert "is not a program written by torch.export.save" in str(exit_info.value.code)


@pytest.mark.parametrize("argv", [["compile", "lego_vgg16", "--batch", "-1"],
                                  ["tune", "lego_vgg16", "--trials", "-5"],
                                  ["bench", "--threads", "0"]])
def test_cli_refuses_counts_out_of_range_while_parsing(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "must be at least" in capsys.readouterr().err


def test_a_loaded_model_exports_again(tmp_path):
    layer, x = small()
    compiled = lego_tvm.compile(layer, (x,), tuning_logs=None)
    loaded = lego_tvm.load(compiled.export(str(tmp_path / "a.so")))
    again = lego_tvm.load(loaded.export(str(tmp_path / "b.so")))
    np.testing.assert_array_equal(again(x.numpy()), compiled(x.numpy()))


def test_cli_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="not a writable folder"):
        main(["--debug", "compile", "lego_vgg16", "-o", "nodir/m.so", "--no-check"])


class Nested(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = LegoConv2d(8, 8, 3, 2, 0.5)

    def forward(self, x):
        y = self.conv(x)
        return {"maps": y, "pair": (y.relu(), [y * 2])}


def test_outputs_keep_the_structure_the_model_returns(tmp_path):
    model, x = Nested().eval(), torch.randn(1, 8, 6, 6)
    compiled = lego_tvm.compile(model, (x,), tuning_logs=None)
    with torch.no_grad():
        want = model(x)
    for candidate in (compiled, lego_tvm.load(compiled.export(str(tmp_path / "m.so")))):
        got = candidate(x)
        assert set(got) == {"maps", "pair"} and isinstance(got["pair"], tuple)
        assert isinstance(got["pair"][1], list) and len(got["pair"][1]) == 1
        for a, b in ((got["maps"], want["maps"]), (got["pair"][0], want["pair"][0]),
                     (got["pair"][1][0], want["pair"][1][0])):
            assert isinstance(a, torch.Tensor)
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
