"""``lego-tvm bench``: the outputs a user reads (JSON, markdown, PNG), with the oneDNN column,
ONNX Runtime and OpenVINO, and the scaling table, on a small run; the runtimes' outputs
checked against PyTorch, a missing runtime skipped with how to install it."""
import json
import sys

import pytest
import torch

from conftest import TOLERANCE
from lego_tvm.bench import runtimes
from lego_tvm.bench.models import format_model_table
from lego_tvm.cli import main
from lego_tvm.support.accuracy import BF16_TOLERANCE
from lego_tvm.support.targets import host_has_bf16


def small_dense_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 8, 3, stride=2)).eval()
    return model, torch.randn(1, 8, 12, 12)


def test_runtimes_run_the_dense_model_and_are_checked_against_pytorch():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    model, x = small_dense_model()
    with torch.no_grad():
        reference = model(x).numpy()
    lines = []
    runs, errors = runtimes.runtime_runs(model, x, reference, 2, lines.append, "small")
    assert set(runs) == set(errors) == {"onnxruntime", "openvino", "openvino_default"}
    assert errors["onnxruntime"] <= TOLERANCE and errors["openvino"] <= TOLERANCE, errors
    assert errors["openvino_default"] < 0.1, errors       # bf16 where the CPU has it
    for run in runs.values():
        run()
    assert runtimes.precision_of_openvino_default() in ("bf16", "f32")


def test_a_missing_runtime_is_skipped_with_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)      # import raises ImportError
    model, x = small_dense_model()
    lines = []
    runs, _ = runtimes.runtime_runs(model, x, model(x).detach().numpy(), 2, lines.append, "m")
    assert "onnxruntime" not in runs
    assert any("skipping ONNX Runtime" in line and 'pip install "lego-tvm[bench]"' in line
               for line in lines), lines


def test_the_bar_is_the_fastest_fp32_competitor():
    """OpenVINO's default precision (bf16) is shown with its error, never the bar."""
    result = {"model": "m", "batch": 1,
              "competitor_errors": {"openvino_default": 2.4e-2, "lego_tvm_bf16": 2.5e-2},
              "openvino_default_precision": "bf16", "lego_tvm_bf16_precision": "bf16",
              "median_ms": {"torch_dense": 60.0, "onnxruntime": 40.0, "openvino": 38.0,
                            "openvino_default": 20.0, "lego_tvm_bf16": 8.0, "lego_tvm": 19.0}}
    table = format_model_table([result])
    assert "| 2.00x (OpenVINO fp32, dense-folded) | 2.50x |" in table    # bf16: 20 / 8
    assert "20.00 ms (bf16, error 2.4e-02)" in table
    assert "8.00 ms (bf16, error 2.5e-02)" in table


@pytest.mark.slow
def test_bench_writes_model_and_scaling_results(tmp_path, capsys):
    main(["bench", "--threads", "2", "--models", "lego_vgg16", "--no-layers", "--no-torch-compile",
          "--scaling", "--scaling-model", "lego_vgg16", "--scaling-batches", "1", "2", "--repeat", "2",
          "--warmup", "1", "--out-dir", str(tmp_path)])
    with open(tmp_path / "bench.json") as f:
        results = json.load(f)
    [model] = results["models"]
    for key in ("torch_lego", "torch_dense", "tvm_no_pass", "lego_tvm", "lego_tvm_nchwc",
                "lego_tvm_auto", "onnxruntime", "openvino", "openvino_default"):
        assert model["median_ms"][key] > 0, key
    assert model["competitor_errors"]["onnxruntime"] <= 1e-4
    assert model["competitor_errors"]["openvino"] <= 1e-4
    for check in ("max_rel_error", "max_rel_error_nchwc", "max_rel_error_auto"):
        assert model[check] <= 1e-4, check
    if host_has_bf16():
        assert model["median_ms"]["lego_tvm_bf16"] > 0
        assert 0 < model["competitor_errors"]["lego_tvm_bf16"] <= BF16_TOLERANCE
    assert {c["backend"] for c in model["compute_once"]} <= {"tvm", "winograd", "onednn"}
    assert all(c["tvm_ms"] > 0 and c["onednn_ms"] > 0 for c in model["compute_once"])
    assert any(c["winograd_ms"] for c in model["compute_once"])
    scaling = results["scaling"]
    assert [(r["batch"], r["threads"]) for r in scaling] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for row in scaling:
        assert row["max_rel_error_vs_dense"] <= 1e-4
        assert row["median_ms"]["onnxruntime"] > 0 and row["median_ms"]["openvino"] > 0
        assert max(row["competitor_errors"].values()) <= 1e-4
        assert "openvino_default" not in row["median_ms"]        # fp32 competitors only
        assert row["median_ms"]["torch_dense"] > 0 and row["median_ms"]["lego_tvm"] > 0
    overhead = results["overhead_us"]
    assert set(overhead) == {"torch", "lego_tvm_torch", "lego_tvm_numpy", "vm"}
    assert 0 < overhead["vm"] < overhead["lego_tvm_numpy"]   # the wrapper costs something
    out, err = capsys.readouterr()
    assert "bench: 3/3 benchmarks" in err          # the model, the scaling run, the overhead
    assert "| lego_vgg16 | 2 | 2 |" in out and "fastest maps per kernel" in out
    assert "lego-tvm's call costs" in out
    assert "OpenVINO fp32, dense-folded" in out and "lego-tvm vs fastest fp32 other" in out
    assert "bf16: lego-tvm vs OpenVINO default" in out
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert torch.get_num_threads() == 2, "the scaling run left its thread count behind"


def test_stage_profile_splits_a_kernel_into_its_stages():
    from lego_tvm.bench.layers import LayerCase
    from lego_tvm.bench.stages import format_stage_table, profile_layer
    from lego_tvm.support.targets import resolve_target

    lines = []
    result = profile_layer(LayerCase(32, 16, 1), resolve_target(None), threads=2, rounds=3,
                           progress=lines.append)
    ms, stages = result["median_ms"], result["stages_ms"]
    assert set(ms) == {"full", "no_pad", "few_outputs", "one_thread"}
    assert all(t > 0 for t in ms.values())
    assert stages["padding"] >= 0 and stages["gather_sum"] >= 0
    assert abs(sum(stages.values()) - ms["full"]) < 1e-9
    assert result["parallel_efficiency"] > 0 and len(lines) == 2
    table = format_stage_table([result], peak=100.0)
    assert "| 32ch 16x16 s1 |" in table and "register tile" in table
    if host_has_bf16():
        result = profile_layer(LayerCase(32, 16, 1), resolve_target(None), threads=2, rounds=3,
                               progress=lines.append, precision="bf16")
        assert result["precision"] == "bf16" and result["median_ms"]["full"] > 0
        assert result["unit"] == "AVX512_BF16"      # 16 channels a split: not AMX
        # A fixed rate: on a layer this small the measured compute-once stage (the difference
        # of two timings) can come out at or below zero, and then it has no rate.
        table = format_stage_table([{**result, "compute_once_gflops": 25.0}], peak=100.0,
                                   bf16_peak=50.0)
        assert "| 32ch 16x16 s1 (bf16, AVX512_BF16) |" in table
        assert "| 25.0 | 50% of AVX512_BF16 |" in table


def test_kernel_profile_times_every_kernel_of_a_model():
    from lego_tvm.bench.kernels import format_kernel_table, profile_kernels
    from lego_tvm.support.targets import resolve_target

    lines = []
    rows = profile_kernels("lego_vgg16", resolve_target(None), lines.append)
    assert sum(r["calls"] for r in rows if "o=2" in r["shape"]) == 14    # every Lego layer
    assert all(r["ms"] > 0 and r["calls"] >= 1 for r in rows)
    assert all(r["macs"] > 0 for r in rows if r["shape"])
    table = format_kernel_table("lego_vgg16", rows, peak=100.0, model_ms=3.0)
    assert "kernels alone sum to" in table and "the model runs in 3.00 ms" in table


def test_throughput_serves_a_model_from_several_client_threads():
    from lego_tvm.bench.throughput import bench_throughput, format_throughput_table

    rows = bench_throughput("lego_vgg16", requests=8, clients=(1, 2), progress=lambda _: None)
    assert [r["clients"] for r in rows] == [1, 2]
    assert all(r["requests_per_s"]["lego_tvm"] > 0 for r in rows)
    assert "| lego_vgg16 | 2 |" in format_throughput_table(rows)


@pytest.mark.slow
def test_layer_bench_times_auto_and_takes_lego_tvms_fastest_way():
    from lego_tvm.bench.layers import OURS, LayerCase, bench_layer, format_layer_table, ours_ms

    result = bench_layer(LayerCase(32, 16, 1), repeat=2, warmup=1, use_torch_compile=False,
                         progress=lambda line: None)
    t = result["median_ms"]
    assert t["lego_tvm_auto"] > 0 and result["max_rel_error"] <= 1e-4
    assert ours_ms(result) == min(t[k] for k in OURS if k in t)
    [choice] = result["compute_once"]
    assert set(choice["winograd_ms"]) == {2, 4}      # a 3x3 stride-1 layer: both tiles timed
    table = format_layer_table([result], peak=None)
    assert "fastest maps (auto" in table and "| 32ch 16x16 s1 |" in table
