"""``lego-tvm bench``: the outputs a user reads (JSON, markdown, PNG), with the oneDNN column
and the scaling table, on a small run."""
import json

import pytest
import torch

from lego_tvm.cli import main


@pytest.mark.slow
def test_bench_writes_model_and_scaling_results(tmp_path, capsys):
    main(["bench", "--threads", "2", "--models", "lego_vgg16", "--no-layers", "--no-torch-compile", "--scaling",
          "--scaling-model", "lego_vgg16", "--scaling-batches", "1", "2", "--repeat", "2",
          "--warmup", "1", "--out-dir", str(tmp_path)])
    with open(tmp_path / "bench.json") as f:
        results = json.load(f)
    [model] = results["models"]
    for key in ("torch_lego", "torch_dense", "tvm_no_pass", "lego_tvm", "lego_tvm_nchwc",
                "lego_tvm_onednn"):
        assert model["median_ms"][key] > 0, key
    for check in ("max_rel_error", "max_rel_error_nchwc", "max_rel_error_onednn"):
        assert model[check] <= 1e-4, check
    assert {c["backend"] for c in model["compute_once"]} <= {"tvm", "onednn"}
    assert all(c["tvm_ms"] > 0 and c["onednn_ms"] > 0 for c in model["compute_once"])
    scaling = results["scaling"]
    assert [(r["batch"], r["threads"]) for r in scaling] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for row in scaling:
        assert row["max_rel_error_vs_dense"] <= 1e-4
        assert row["median_ms"]["torch_dense"] > 0 and row["median_ms"]["lego_tvm"] > 0
    out = capsys.readouterr().out
    assert "| lego_vgg16 | 2 | 2 |" in out and "oneDNN maps where faster" in out
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
