"""The one-run GPU check (lego_tvm/bench/gpu.py, run by tools/gpu_check.py and by
``lego-tvm bench --target cuda``) keeps working between GPU runs: its whole flow
(compile, check against PyTorch, time every competitor, fp16 probe, a short tuning, the
schedule variants with their threads serial, the written results) runs here on the CPU
with small sizes."""
import importlib.util
import json
import os

import pytest

from conftest import cuda_source

TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "gpu_check.py")


def load_gpu_check():
    """The tool script, loaded as the device kit runs it."""
    spec = importlib.util.spec_from_file_location("gpu_check", TOOL)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    return gpu_check


def test_without_a_gpu_it_says_which_library_is_missing(capsys, tmp_path):
    """No driver on CI: TVM swallows why its CUDA runtime did not load; the check names it."""
    code = load_gpu_check().main(["--smoke", "--out", str(tmp_path)])
    message = capsys.readouterr().err
    assert code == 2
    assert "TVM sees no CUDA GPU" in message and "libcuda.so.1" in message, message


def test_smoke_checks_one_layer(capsys, tmp_path):
    code = load_gpu_check().main(["--device", "cpu", "--smoke", "--out", str(tmp_path),
                                  "--repeat", "2", "--warmup", "1"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert row["lego_layers_fused"] == 1
    assert max(row["max_rel_error"].values()) <= 1e-4


@pytest.mark.slow
def test_gpu_check_flow_runs_on_the_cpu(tmp_path):
    gpu_check = load_gpu_check()
    out = str(tmp_path / "out")
    # No time budget here: the budget is for the GPU run; a loaded CI machine is slower.
    code = gpu_check.main(["--device", "cpu", "--quick", "--out", out, "--repeat", "2",
                           "--warmup", "1", "--trials", "2", "--budget-s", "100000"])
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["failures"] == [] and results["skipped"] == [], results
    assert code == 0
    rows = results["models"] + results["layers"] + [results["tuning"]["row"]]
    assert len(rows) == 3
    for row in rows:
        assert {"lego_tvm", "tvm_no_pass", "torch_lego", "torch_dense",
                "torch_lego_best"} <= set(row["median_ms"])
        assert max(row["max_rel_error"].values()) <= 1e-4
    assert results["tuning"]["manifest"]["trials"] >= 1
    assert os.path.exists(os.path.join(results["tuning"]["log"], "manifest.json"))
    # The variants step: every schedule of one layer, threads serial here, matches the default.
    (variants,) = results["variants"]
    assert {k["stages"] for k in variants["kernels"]} == {"fused", "staged", "tiled"}
    assert all(k["max_rel_error_vs_default"] == 0 for k in variants["kernels"])
    text = open(os.path.join(out, "results.md")).read()
    assert "fp16" in text and "kernel alone, " + variants["name"] in text


def test_cuda_variants_build_each_pixel_count_fused_staged_and_tiled():
    """The GPU check's side-by-side of pixels per thread builds here (it times only on a GPU)."""
    import torch

    from lego_tvm.nn.lego_conv import LegoConv2d
    from lego_tvm.support.targets import resolve_target

    layer = LegoConv2d(16, 16, 3, 2, 0.5)
    from lego_tvm.bench import gpu as gpu_check
    variants = gpu_check.cuda_variants(layer, torch.randn(1, 16, 6, 6),
                                       resolve_target("cuda-h100"))
    # 4 does not divide 6; each pixel count fused (the default here), stage by stage, tiled
    assert [(config.pixels, gpu_check.stages_name(config)) for config, _, _ in variants] == [
        (1, "fused"), (1, "staged"), (1, "tiled"), (2, "fused"), (2, "staged"), (2, "tiled")]
    for config, _, kernel in variants:
        assert f"__launch_bounds__({config.threads})" in cuda_source(kernel)


def test_tf32_timing_turns_tf32_on_only_while_it_times():
    """The TF32 column times cuDNN as PyTorch runs it by default; every other number is fp32."""
    import argparse

    import torch

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.backends.cudnn.allow_tf32)
            return x

    torch.backends.cudnn.allow_tf32 = False
    from lego_tvm.bench.gpu import Check
    check = Check(argparse.Namespace(device="cpu", repeat=2, warmup=1))
    check.time_torch_tf32(Probe(), torch.ones(1))
    assert seen == [True] * 3 and torch.backends.cudnn.allow_tf32 is False

