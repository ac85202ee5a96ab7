"""Bad input gets a clear error, with the message a user sees: never a crash, a half-written
artifact or a silently different result.

Elsewhere: call-time shapes, dtypes and input counts, an untraceable model, unknown presets
and target kinds, an export folder that does not exist (test_compiler_api.py); tuning logs made for
another TVM version, target or compute version, truncated records and a folder without a
manifest (test_tuning_search.py).
"""
import json
import shutil
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from tvm.target import Target

import lego_tvm
from lego_tvm.frontend.pytorch import InputMutationWarning, ModelImportError
from lego_tvm.runtime import ArtifactError
from lego_tvm.support.targets import TargetError
from lego_tvm.tuning.logs import DATABASE_FILES, MANIFEST, TuningLogError, read_manifest
from reference_lego import AuthorsLegoConv2d


def _lego():
    return lego_tvm.LegoConv2d(8, 8, 3).eval()


X = torch.randn(1, 8, 5, 5)


# compile: the model and its example inputs

@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_model_of_another_dtype_is_refused_naming_it(dtype):
    """TVM's import would compute float64/float16 convs in float32 and return float32."""
    dtype = getattr(torch, dtype)
    with pytest.raises(ModelImportError, match=f"parameter lego is {str(dtype)[6:]}; lego-tvm "
                                               "compiles float32 models with float32 inputs"):
        lego_tvm.compile(_lego().to(dtype), X.to(dtype), tuning_logs=None)


def test_example_input_of_another_dtype_is_refused_naming_it():
    with pytest.raises(ModelImportError, match="input x is float64; lego-tvm compiles float32"):
        lego_tvm.compile(_lego(), X.double(), tuning_logs=None)


def test_numpy_example_input_is_a_clear_error():
    with pytest.raises(TypeError, match="example input 0 is a ndarray; compile takes torch "
                                        "tensors"):
        lego_tvm.compile(_lego(), (X.numpy(),), tuning_logs=None)


def test_authors_module_with_fewer_input_channels_than_splits():
    """Our module refuses this when built (test_nn_lego_conv.py); the authors' accepts it."""
    with pytest.raises(ModelImportError, match=r"in_channels=2, n_split=4\) has 0 input "
                                               "channels per split"):
        lego_tvm.compile(AuthorsLegoConv2d(2, 8, 3, 4, 0.5).eval(), torch.randn(1, 2, 5, 5))


def test_op_tvm_cannot_translate_is_named():
    class CumulativeMax(torch.nn.Module):
        def forward(self, x):
            return torch.cummax(x, 1)[0]

    with pytest.raises(ModelImportError, match="PyTorch frontend could not translate the "
                                               "model: .*cummax"):
        lego_tvm.compile(CumulativeMax(), X, tuning_logs=None)


class CountsCalls(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x):
        self.calls.add_(1)
        return x * self.calls


def test_model_updating_its_buffers_is_refused_naming_them():
    with pytest.raises(ModelImportError, match=r"forward updates calls in place.*keeps no state"):
        lego_tvm.compile(CountsCalls().eval(), torch.randn(1, 3, 4, 4))


class ReluInPlace(torch.nn.Module):
    def forward(self, x):
        return torch.relu_(x) * 2


def test_model_changing_its_input_is_compiled_with_a_warning():
    x = torch.randn(1, 3, 4, 4)
    with pytest.warns(InputMutationWarning, match=r"changes its input\(s\) x in place"):
        compiled = lego_tvm.compile(ReluInPlace().eval(), x)
    before = x.clone()
    np.testing.assert_array_equal(compiled(x).numpy(), torch.relu(before).numpy() * 2)
    assert torch.equal(x, before)


def test_unknown_preset_is_refused_by_compile_before_any_work():
    with pytest.raises(TargetError, match="unknown target 'x86-avx9'"):
        lego_tvm.compile(_lego(), X, target="x86-avx9")


# Tuning logs: a shipped log, copied and damaged

SHIPPED = sorted(p.parent for p in Path(str(files("lego_tvm.tuning_logs"))).glob(
    f"*/*/{MANIFEST}"))


@pytest.fixture
def log_copy(tmp_path):
    log = tmp_path / "log"
    shutil.copytree(SHIPPED[0], log)
    return log


def _replace_first_line(path: Path, line: str) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join([line] + lines[1:]) + "\n")


def _drop_key(path: Path, key: str) -> None:
    manifest = json.loads(path.read_text())
    del manifest[key]
    path.write_text(json.dumps(manifest))


DAMAGE = {
    "manifest is not text": (lambda log: (log / MANIFEST).write_bytes(b"\xff\xfe\x00garbage"),
                             "manifest.json is corrupt"),
    "manifest lacks a key": (lambda log: _drop_key(log / MANIFEST, "compute_version"),
                             "manifest.json lacks compute_version"),
    "workload file missing": (lambda log: (log / DATABASE_FILES[0]).unlink(),
                              "is incomplete: database_workload.json is missing"),
    "record edited by hand": (lambda log: _replace_first_line(log / DATABASE_FILES[1],
                                                              '["x", 1]'),
                              "cannot be read by MetaSchedule"),
    "workload edited by hand": (lambda log: _replace_first_line(log / DATABASE_FILES[0],
                                                                '["abc", "def"]'),
                                "cannot be read by MetaSchedule"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_tuning_log_is_refused(log_copy, damage):
    edit, message = DAMAGE[damage]
    target = Target(read_manifest(log_copy)["target"])    # only the damage differs
    edit(log_copy)
    with pytest.raises(TuningLogError, match=message):
        lego_tvm.compile(_lego(), X, target=target, tuning_logs=str(log_copy))


def test_tune_does_not_resume_a_first_run_cut_mid_record(tmp_path):
    """A run stopped while writing its first records leaves no manifest and a cut line;
    MetaSchedule itself would fail on it with 'Unexpected token'."""
    records = (SHIPPED[0] / DATABASE_FILES[1]).read_text()
    (tmp_path / DATABASE_FILES[1]).write_text(records[:-40])
    with pytest.raises(TuningLogError, match=r"line \d+ is corrupt or truncated"):
        lego_tvm.tune(_lego(), X, tmp_path, trials=2)


# export and load

@pytest.fixture(scope="module")
def compiled():
    return lego_tvm.compile(_lego(), X, tuning_logs=None)


def test_export_to_a_folder_is_a_clear_error(compiled, tmp_path):
    with pytest.raises(OSError, match="it is a folder; give a file name"):
        compiled.export(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_nothing_behind(compiled, tmp_path, monkeypatch):
    class FailingExecutable:
        def export_library(self, path, **_):
            Path(path).write_bytes(b"\x7fELF half")
            raise RuntimeError("disk full")

    monkeypatch.setattr(compiled, "_executable", FailingExecutable())
    with pytest.raises(RuntimeError, match="disk full"):
        compiled.export(str(tmp_path / "model.so"))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def exported(compiled, tmp_path_factory):
    return Path(compiled.export(str(tmp_path_factory.mktemp("export") / "model.so")))


def test_truncated_library_is_refused_before_loading(exported, tmp_path):
    """Loading it would kill the process (SIGBUS) as the loader maps past its end."""
    shutil.copy(f"{exported}.json", tmp_path / "model.so.json")
    (tmp_path / "model.so").write_bytes(exported.read_bytes()[:20000])
    with pytest.raises(ValueError, match=r"is not the library exported with .*'library': "
                                         r"20000 bytes, \d+ exported\): truncated or changed"):
        lego_tvm.load(str(tmp_path / "model.so"))


def test_library_from_another_export_is_refused(exported, tmp_path):
    other = lego_tvm.compile(torch.nn.Sequential(_lego(), torch.nn.ReLU()).eval(), X,
                             tuning_logs=None)
    other.export(str(tmp_path / "model.so"))
    shutil.copy(f"{exported}.json", tmp_path / "model.so.json")
    with pytest.raises(ValueError, match="truncated or changed since"):
        lego_tvm.load(str(tmp_path / "model.so"))


def _without_fingerprint(exported, tmp_path, library: bytes) -> str:
    meta = json.loads(Path(f"{exported}.json").read_text())
    del meta["library"]
    (tmp_path / "model.so.json").write_text(json.dumps(meta))
    (tmp_path / "model.so").write_bytes(library)
    return str(tmp_path / "model.so")


def test_a_library_without_fingerprint_is_refused_unless_allowed(exported, tmp_path):
    """A .json written by hand or by an older lego-tvm: nothing to check the library
    against, and a truncated one killed the process with SIGBUS."""
    path = _without_fingerprint(exported, tmp_path, exported.read_bytes())
    with pytest.raises(ArtifactError, match="no 'library' fingerprint.*allow_unfingerprinted"):
        lego_tvm.load(path)
    x = X.numpy()
    np.testing.assert_array_equal(lego_tvm.load(path, allow_unfingerprinted=True)(x),
                                  lego_tvm.load(str(exported))(x))


def test_a_truncated_library_without_fingerprint_fails_the_elf_check(exported, tmp_path):
    path = _without_fingerprint(exported, tmp_path, exported.read_bytes()[:20000])
    with pytest.raises(ArtifactError, match="is truncated: its ELF headers need"):
        lego_tvm.load(path, allow_unfingerprinted=True)
    (tmp_path / "model.so").write_bytes(b"not a library at all, but long enough" * 4)
    with pytest.raises(ArtifactError, match="not a 64-bit little-endian ELF"):
        lego_tvm.load(path, allow_unfingerprinted=True)


@pytest.mark.parametrize("inputs", [None, [], [{"shape": [1, 8, 6, 6]}]])
def test_a_description_without_valid_inputs_names_the_field(exported, tmp_path, inputs):
    meta = json.loads(Path(f"{exported}.json").read_text())
    meta["inputs"] = inputs
    (tmp_path / "model.so.json").write_text(json.dumps(meta))
    shutil.copy(exported, tmp_path / "model.so")
    with pytest.raises(ArtifactError, match="'inputs' must be a list"):
        lego_tvm.load(str(tmp_path / "model.so"))


def test_a_description_edited_to_another_shape_names_the_field(exported, tmp_path):
    meta = json.loads(Path(f"{exported}.json").read_text())
    real = meta["inputs"][0]["shape"]
    meta["inputs"][0]["shape"] = real[:2] + [real[2] + 1, real[3] + 1]
    (tmp_path / "model.so.json").write_text(json.dumps(meta))
    shutil.copy(exported, tmp_path / "model.so")
    model = lego_tvm.load(str(tmp_path / "model.so"))
    with pytest.raises(ArtifactError, match=r"model.so.json: 'inputs'\[0\] says shape .* but the "
                                            r"library takes R.Tensor\(\(1, 8, 5, 5\)"):
        model(np.zeros(meta["inputs"][0]["shape"], np.float32))


@pytest.mark.parametrize("text,message", [('{"format": "lego-tv', "is corrupt"),
                                          ("[1, 2]", "is not a lego-tvm model description")])
def test_damaged_model_description_is_refused(exported, tmp_path, text, message):
    shutil.copy(exported, tmp_path / "model.so")
    (tmp_path / "model.so.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        lego_tvm.load(str(tmp_path / "model.so"))


def test_export_refuses_names_it_could_not_load_and_leaves_nothing(compiled, tmp_path):
    with pytest.raises(ValueError, match="must end in .so"):
        compiled.export(str(tmp_path / "model"))
    (tmp_path / "m.so.json").mkdir()
    with pytest.raises(OSError, match=r"m.so.json: it is a folder"):
        compiled.export(str(tmp_path / "m.so"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.so.json"]
