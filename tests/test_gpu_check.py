"""tools/gpu_check.py, the one-run GPU check, keeps working between GPU runs: its whole flow
(compile, check against PyTorch, time every competitor, fp16 probe, a short tuning, the
written results) runs here on the CPU with small sizes."""
import importlib.util
import json
import os

import pytest

TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "gpu_check.py")


@pytest.mark.slow
def test_gpu_check_flow_runs_on_the_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", TOOL)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
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
    assert "fp16" in open(os.path.join(out, "results.md")).read()
