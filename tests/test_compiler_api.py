"""The public surface: compile's arguments, clear errors for bad input, the CLI."""
import os

import numpy as np
import pytest
import torch

import lego_tvm
from conftest import TOLERANCE
from lego_tvm.support.accuracy import max_relative_error
from lego_tvm.cli import main
from lego_tvm.nn.lego_conv import LegoConv2d
from lego_tvm.frontend.pytorch import ModelImportError
from lego_tvm.runtime import InputError
from lego_tvm.support.targets import TargetError, resolve_target


@pytest.fixture(scope="module")
def small():
    model = torch.nn.Sequential(lego_tvm.LegoConv2d(8, 8, 3), torch.nn.ReLU()).eval()
    x = torch.randn(2, 8, 5, 5)
    return model, x, lego_tvm.compile(model, (x,))


def test_numpy_in_numpy_out(small):
    _, x, compiled = small
    out = compiled(x.numpy())
    assert isinstance(out, np.ndarray) and out.shape == (2, 8, 5, 5)


def test_wrong_shape_is_a_clear_error(small):
    with pytest.raises(InputError, match=r"shape \[1, 8, 5, 5\].*compiled for shape \[2, 8, 5, 5\]"):
        small[2](np.zeros((1, 8, 5, 5), "float32"))


def test_wrong_dtype_is_a_clear_error(small):
    with pytest.raises(InputError, match="dtype float64"):
        small[2](np.zeros((2, 8, 5, 5)))


def test_wrong_number_of_inputs(small):
    with pytest.raises(InputError, match="takes 1 input"):
        small[2](small[1].numpy(), small[1].numpy())


def test_targets():
    assert resolve_target(None).kind.name == "llvm"
    assert str(resolve_target("x86-avx512").attrs["mcpu"]) == "skylake-avx512"
    assert str(resolve_target({"kind": "llvm", "mcpu": "znver3"}).attrs["mcpu"]) == "znver3"
    with pytest.raises(TargetError, match=r"unknown target 'x86-avx9': not a preset \(host, .*"
                                          r"target tags \(tvm.target.list_tags\(\)"):
        resolve_target("x86-avx9")
    # TVM's tags, as TVM users write targets
    h100 = resolve_target("nvidia/nvidia-h100")
    assert (h100.kind.name, str(h100.attrs["arch"])) == ("cuda", "sm_90a")
    pi = resolve_target("raspberry-pi/4b-aarch64")
    assert (str(pi.attrs["mcpu"]), str(pi.attrs["mtriple"])) == ("cortex-a72", "aarch64-linux-gnu")
    with pytest.raises(TargetError, match="kind 'opencl' is not supported yet"):
        resolve_target({"kind": "opencl"})
    with pytest.raises(TargetError, match="TVM rejects the target"):
        resolve_target({"kind": "no-such-kind"})


def test_compile_takes_a_tvm_tag_for_another_cpu():
    compiled = lego_tvm.compile(lego_tvm.LegoConv2d(8, 8, 3).eval(), torch.randn(1, 8, 6, 6),
                                target="raspberry-pi/4b-aarch64", tuning_logs=None)
    assert len(compiled.report.layers) == 1
    with pytest.raises(RuntimeError, match="built for aarch64"):
        compiled(torch.randn(1, 8, 6, 6))


def test_compile_accepts_a_target_dict_and_a_preset():
    model = lego_tvm.LegoConv2d(4, 4, 3).eval()
    x = torch.randn(1, 4, 4, 4)
    for target in ({"kind": "llvm", "num-cores": 2}, "x86-avx2"):
        out = lego_tvm.compile(model, x, target=target)(x.numpy())
        with torch.no_grad():
            np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_export_to_an_unwritable_place_fails_cleanly(small, tmp_path):
    with pytest.raises(OSError, match="not a writable folder"):
        small[2].export(str(tmp_path / "missing" / "model.so"))
    assert os.listdir(tmp_path) == []


def test_load_missing_file():
    with pytest.raises(FileNotFoundError, match="no exported model"):
        lego_tvm.load("/nonexistent/model.so")


def test_untraceable_model_is_a_clear_error():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(ModelImportError, match="torch.export could not trace DataDependent: "
                                               ".*data-dependent expression") as error:
        lego_tvm.compile(DataDependent(), torch.randn(1, 4))
    assert error.value.__cause__ is not None          # torch's own error, chained


def test_cli_compiles_a_pt2_file_and_exports(tmp_path, capsys):
    model = torch.nn.Sequential(lego_tvm.LegoConv2d(8, 16, 3, 2, 0.5),
                                torch.nn.BatchNorm2d(16), torch.nn.ReLU()).eval()
    x = torch.randn(1, 8, 6, 6)
    program = torch.export.export(model, (x,), strict=False)
    torch.export.save(program, str(tmp_path / "m.pt2"))
    main(["compile", str(tmp_path / "m.pt2"), "-o", str(tmp_path / "m.so")])
    out = capsys.readouterr().out
    assert "Lego layers rewritten: 1" in out and "batch_norm+relu" in out and "(ok)" in out
    assert os.path.exists(tmp_path / "m.so") and os.path.exists(tmp_path / "m.so.json")
    np.testing.assert_allclose(lego_tvm.load(str(tmp_path / "m.so"))(x.numpy()),
                               model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("command", ["demo", "compile", "bench"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: lego-tvm " + command in capsys.readouterr().out


def test_python_dash_m_is_the_command():
    import subprocess
    import sys
    ok = subprocess.run([sys.executable, "-m", "lego_tvm", "compile", "--help"],
                        capture_output=True, text=True, timeout=120, cwd="/")
    assert ok.returncode == 0 and "usage: lego-tvm compile" in ok.stdout
    wrong = subprocess.run([sys.executable, "-m", "lego_tvm", "compile", "--threads", "0", "x"],
                           capture_output=True, text=True, timeout=120, cwd="/")
    assert wrong.returncode == 2 and "--threads" in wrong.stderr


def test_kernels_use_every_physical_core_by_default():
    """TVM alone would take half the logical CPUs (one thread on a 2-vCPU machine)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    script = ("import os, psutil, lego_tvm, tvm\n"
              "want = min(len(os.sched_getaffinity(0)), psutil.cpu_count(logical=False))\n"
              "got = tvm.get_global_func('runtime.NumThreads')()\n"
              "assert got == want, (got, want)\n")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)


def test_cli_threads_default_leaves_the_users_setting_alone():
    """Without --threads the CLI keeps TVM_NUM_THREADS (the user's, or the physical-core
    policy's); with it, TVM's pool and PyTorch take that count."""
    import subprocess
    import sys

    default = ("import os, tvm\n"
               "from lego_tvm.cli import _parser, _threads\n"
               "assert _threads(_parser().parse_args(['compile', 'm'])) == 1\n"
               "assert os.environ['TVM_NUM_THREADS'] == '1'\n"
               "assert tvm.get_global_func('runtime.NumThreads')() == 1\n")
    given = ("import torch, tvm\n"
             "from lego_tvm.cli import _parser, _threads\n"
             "assert _threads(_parser().parse_args(['compile', 'm', '--threads', '2'])) == 2\n"
             "assert tvm.get_global_func('runtime.NumThreads')() == 2\n"
             "assert torch.get_num_threads() == 2\n")
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    for script in (default, given):
        subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)


def test_cli_refuses_a_thread_count_below_one(capsys):
    for value in ("0", "-1"):
        with pytest.raises(SystemExit):
            main(["compile", "lego_vgg16", "--threads", value])
        assert "--threads: must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_readme_main_job_runs(tmp_path, capsys):
    """`lego-tvm demo`: report, check against PyTorch, speed table, JSON/markdown/PNG."""
    main(["demo", "--repeat", "2", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Lego layers rewritten: 14" in out and "(ok)" in out
    assert "| lego_vgg16 (batch 1) |" in out
    assert sorted(os.listdir(tmp_path)) == ["bench.json", "bench.md", "bench.png"]


def test_inputs_and_outputs_are_shared_not_copied_and_never_overwritten():
    """Host arrays go in and come out without a copy when TVM can take them as they are:
    the input must stay as it was, and an output must not change with the next call."""
    layer = LegoConv2d(16, 16, 3, 2, 0.5).eval()
    x1, x2 = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    compiled = lego_tvm.compile(layer, (x1,), tuning_logs=None)
    x1_before = x1.clone()
    first = compiled(x1.numpy())
    kept = first.copy()
    second = compiled(x2.numpy())
    assert torch.equal(x1, x1_before)
    np.testing.assert_array_equal(first, kept)
    assert not np.shares_memory(first, second)
    with torch.no_grad():
        assert max_relative_error(second, layer(x2).numpy()) <= TOLERANCE
    unaligned = np.zeros(1 + x1.numel(), np.float32)[1:].reshape(x1.shape)  # 4-byte offset
    unaligned[...] = x1.numpy()
    np.testing.assert_array_equal(compiled(unaligned), kept)




def test_torch_inputs_shared_or_copied_give_the_same_answer(small):
    """Contiguous aligned torch tensors go in through DLPack; views, tensors that need grad
    and read-only arrays take the slower paths, with the same result."""
    model, x, compiled = small
    with torch.no_grad():
        expected = model(x).numpy()
    wide = torch.randn(2, 8, 5, 10)
    wide[..., ::2] = x
    read_only = x.numpy().copy()
    read_only.flags.writeable = False
    for arg in (x, x.clone().requires_grad_(True), wide[..., ::2], read_only):
        out = compiled(arg)
        assert isinstance(out, torch.Tensor) == isinstance(arg, torch.Tensor)
        assert max_relative_error(np.asarray(out), expected) <= TOLERANCE
@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_one_model_called_from_several_threads_gives_each_caller_its_answer(dynamic_batch,
                                                                          tmp_path):
    """A server calls one model from a thread pool: 8 threads x 100 calls, on the compiled
    model and on the exported one loaded back, every result checked. (One shared VM broke
    with 4 threads; each thread now runs its own.)"""
    from concurrent.futures import ThreadPoolExecutor

    layer = LegoConv2d(16, 16, 3, 2, 0.5).eval()
    batches = [1, 3] if dynamic_batch else [1]
    xs = [torch.randn(batches[i % len(batches)], 16, 8, 8) for i in range(8)]
    compiled = lego_tvm.compile(layer, (xs[0],), dynamic_batch=dynamic_batch, tuning_logs=None)
    loaded = lego_tvm.load(compiled.export(str(tmp_path / "m.so")))
    with torch.no_grad():
        references = [layer(x).numpy() for x in xs]
    for model in (compiled, loaded):
        with ThreadPoolExecutor(8) as pool:
            outputs = list(pool.map(lambda i: (i, model(xs[i % 8].numpy())), range(800)))
        for i, out in outputs:
            assert out.shape == references[i % 8].shape
            assert max_relative_error(out, references[i % 8]) <= TOLERANCE, i


class ConstantBranch(torch.nn.Module):
    """Three outputs: computed, a constant (the VM's own buffer), the input passed through."""

    def __init__(self):
        super().__init__()
        self.conv = LegoConv2d(8, 8, 3, 2, 0.5)
        self.scale = torch.nn.Parameter(torch.randn(4))

    def forward(self, x):
        return self.conv(x), self.scale * 2, x


def test_outputs_a_call_does_not_compute_are_returned_as_copies(tmp_path):
    """Changing a returned array must not change what later calls return, nor the input."""
    model, x = ConstantBranch().eval(), torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        constant = (model.scale * 2).numpy()
    compiled = lego_tvm.compile(model, (x,), tuning_logs=None)
    assert compiled.copied_outputs == [1, 2]
    compiled.export(str(tmp_path / "m.so"))
    for candidate in (compiled, lego_tvm.load(str(tmp_path / "m.so"))):
        xn = x.numpy().copy()
        _, first, passed = candidate(xn)
        first += 100
        passed += 100
        np.testing.assert_array_equal(candidate(xn)[1], constant)
        np.testing.assert_array_equal(xn, x.numpy())
