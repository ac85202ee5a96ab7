"""aarch64: cross-compiled Lego models run correctly on an emulated Cortex-A72 (plain
ARMv8.0-A + NEON, so an instruction the A72 lacks fails the test), the fused kernel's inner
loop is NEON FMAs, and cross-compiling without the toolchain is a clear error."""
import os
import re

import numpy as np
import pytest
import torch

import lego_tvm
from conftest import TOLERANCE
from lego_tvm.support.accuracy import max_relative_error
from emulator import run_exported_on_arm
from lego_tvm.support.targets import PRESETS, ToolchainError, resolve_target
from lego_tvm.nn.zoo import get_model
from models import LegoBlock, bottlenecks

ARM_PRESETS = [name for name in PRESETS if name.startswith("arm-")]
# (c, n, kernel, o, ratio, stride, epilogue, batch, size, preset)
LAYERS = [
    (16, 32, 3, 2, 0.5, 1, "bn+relu", 1, 14, "arm-cortex-a72"),
    (16, 16, 3, 2, 0.5, 2, "bn+residual+relu", 2, 15, "arm-cortex-a72"),
    (12, 8, 1, 4, 0.25, 1, "relu", 1, 9, "arm-neon"),
    (8, 24, 5, 1, 1.0, 2, "bn", 2, 11, "arm-neon"),
    (24, 12, 3, 4, 0.5, 1, "residual", 1, 7, "arm-cortex-a72"),
    (32, 64, 3, 2, 0.5, 1, "", 1, 6, "arm-neon"),
]


def _export_case(folder, name, model, inputs, target, layout="NCHW"):
    compiled = lego_tvm.compile(model, inputs, target=target, tuning_logs=None, layout=layout)
    compiled.export(os.path.join(folder, f"{name}.so"))
    np.savez(os.path.join(folder, f"{name}.in.npz"),
             **{f"arg{i}": t.numpy() for i, t in enumerate(inputs)})
    with torch.no_grad():
        return compiled, model(*inputs).numpy()


def _emulated_output(folder, name):
    return np.load(os.path.join(folder, f"{name}.out.npz"))["arr_0"]


def test_lego_layers_and_vgg16_are_correct_on_emulated_aarch64(tmp_path):
    folder = str(tmp_path)
    references = {}
    for i, (c, n, d, o, ratio, stride, epilogue, batch, size, preset) in enumerate(LAYERS):
        block = LegoBlock(c, n, d, o, ratio, stride, epilogue).eval()
        x = torch.randn(batch, c, size, size)
        inputs = (x,)
        if "residual" in epilogue:
            with torch.no_grad():
                inputs = (x, torch.randn_like(block.conv(x)))
        compiled, references[f"layer{i}"] = _export_case(folder, f"layer{i}", block, inputs,
                                                         preset)
        assert len(compiled.report.layers) == 1, f"layer {i} was not fused"
    vgg, x = get_model("lego_vgg16", batch=1)
    compiled, references["vgg16"] = _export_case(folder, "vgg16", vgg, (x,), "arm-cortex-a72")
    assert len(compiled.report.layers) == 14
    # NCHW4c (NEON's 4 lanes) carried between ResNet blocks.
    blocks, x = bottlenecks(), torch.randn(1, 32, 16, 16)
    compiled, references["blocks_nchw4c"] = _export_case(folder, "blocks_nchw4c", blocks, (x,),
                                                         "arm-cortex-a72", layout="NCHWc")
    assert "[NCHW4c -> NCHW4c]" in str(compiled.report)

    log = run_exported_on_arm(folder)
    for name, reference in references.items():
        assert f"{name}.so" in log
        out = _emulated_output(folder, name)
        assert out.shape == reference.shape, name
        assert max_relative_error(out, reference) <= TOLERANCE, name


def _function_asm(asm: str, name: str) -> str:
    """The assembly from ``name``'s label to the next global function label."""
    start = asm.index(f"\n{name}:")
    following = re.search(r"\n(?!\.)[A-Za-z_][\w.]*:\n", asm[start + 1:])
    return asm[start:start + 1 + following.start()] if following else asm[start:]


def test_fused_kernel_inner_loop_is_neon_fma():
    model = lego_tvm.LegoConv2d(32, 64, 3, 2, 0.5).eval()
    compiled = lego_tvm.compile(model, torch.randn(1, 32, 14, 14), target="arm-cortex-a72",
                                tuning_logs=None)
    (llvm_module,) = compiled._executable.mod._collect_dso_modules()
    kernel = _function_asm(llvm_module.inspect_source("asm"), "fused_lego_conv2d_compute_")
    vector_fmas = re.findall(r"\bfmla\s+v\d+\.4s, v\d+\.4s, v\d+\.(?:4s|s\[\d\])", kernel)
    scalar_fmas = re.findall(r"\bfmadd\s+s\d+", kernel)
    assert len(vector_fmas) >= 24, "the register tile should be 24 NEON FMAs per step"
    assert not scalar_fmas


def test_arm_presets_are_aarch64_neon_targets():
    assert {"arm-neon", "arm-cortex-a72", "arm-cortex-a76", "arm-neoverse-n1"} <= set(ARM_PRESETS)
    for name in ARM_PRESETS:
        target = resolve_target(name)
        assert "arm_cpu" in target.keys and bool(target.attrs["feature.has_asimd"])


def test_an_arm_model_says_where_it_can_run(tmp_path):
    compiled = lego_tvm.compile(lego_tvm.LegoConv2d(8, 8, 1, 2, 0.5), torch.randn(1, 8, 4, 4),
                                target="arm-neon", tuning_logs=None)
    with pytest.raises(RuntimeError, match="built for aarch64 and this machine is x86_64.*export"):
        compiled(np.random.rand(1, 8, 4, 4).astype("float32"))
    path = compiled.export(str(tmp_path / "m.so"))
    with pytest.raises(RuntimeError, match="cannot be loaded on this machine: it is built for aarch64"):
        lego_tvm.load(path)


def test_cross_compiling_without_the_toolchain_is_a_clear_error(tmp_path, monkeypatch):
    compiled = lego_tvm.compile(lego_tvm.LegoConv2d(8, 8, 1, 2, 0.5), torch.randn(1, 8, 4, 4),
                                target="arm-neon", tuning_logs=None)
    monkeypatch.setenv("PATH", str(tmp_path))       # no aarch64-linux-gnu-gcc on it
    with pytest.raises(ToolchainError, match="needs the cross compiler aarch64-linux-gnu-gcc.*"
                                             "apt-get install gcc-aarch64-linux-gnu"):
        compiled.export(str(tmp_path / "model.so"))
    assert os.listdir(tmp_path) == []               # nothing half-written


def test_cli_cross_compiles_a_zoo_model_to_an_aarch64_library(tmp_path, capsys):
    from lego_tvm.cli import main

    output = str(tmp_path / "vgg16_a72.so")
    main(["compile", "lego_vgg16", "--target", "arm-cortex-a72", "-o", output])
    printed = capsys.readouterr().out
    assert "not checked against PyTorch here: it is built for aarch64" in printed
    with open(output, "rb") as f:
        header = f.read(20)
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    assert os.path.exists(output + ".json")


def test_cortex_a76_code_is_scheduled_with_the_neoverse_n1_model():
    """LLVM's own A76 entry schedules with the Cortex-A57 model (half the A76's FMA pipes),
    and register-tiled kernels spill; the N1 has the A76's instruction set."""
    from lego_tvm.support.targets import codegen_target, resolve_target

    a76 = resolve_target("arm-cortex-a76")
    built_as = codegen_target(a76)
    assert built_as.attrs["mcpu"] == "neoverse-n1"
    assert built_as.attrs["mtriple"] == a76.attrs["mtriple"]
    assert int(built_as.attrs["num-cores"]) == int(a76.attrs["num-cores"])
    for name in ("arm-cortex-a72", "arm-neoverse-n1", None):
        assert codegen_target(resolve_target(name)) == resolve_target(name) or \
            str(codegen_target(resolve_target(name))) == str(resolve_target(name))
