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
    for key in ("torch_lego", "torch_dense", "tvm_no_pass", "lego_tvm", "lego_tvm_onednn"):
        assert model["median_ms"][key] > 0, key
    assert model["max_rel_error"] <= 1e-4 and model["max_rel_error_onednn"] <= 1e-4
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
