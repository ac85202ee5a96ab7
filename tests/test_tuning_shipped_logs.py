"""The tuning logs shipped in tuning_logs/ still apply to the shipped models: every fused
Lego kernel of each logged model finds its record (checked for the log's own target, so
the test means the same on any x86 machine)."""
import pytest
from tvm.target import Target

from lego_tvm.backend import pipeline
from lego_tvm.backend.precision import to_bf16
from lego_tvm.bench.layers import BenchLayers
from lego_tvm.tuning.logs import check_log, open_database, read_manifest
from lego_tvm.nn.zoo import MODELS, get_model

import importlib.resources
from pathlib import Path

ROOT = Path(str(importlib.resources.files("lego_tvm.tuning_logs")))
LOGS = sorted(p.parent for p in ROOT.glob("*/*/manifest.json"))


def test_logs_are_shipped_for_both_models():
    shipped = {(read_manifest(d)["model"], read_manifest(d)["batch"]) for d in LOGS
               if read_manifest(d).get("lego_pass", True)}
    assert {("lego_vgg16", 1), ("lego_resnet50", 1)} <= shipped


@pytest.mark.slow
@pytest.mark.parametrize("log_dir", LOGS, ids=[f"{d.parent.name}/{d.name}" for d in LOGS])
def test_every_lego_kernel_finds_its_record(log_dir):
    manifest = read_manifest(log_dir)
    target = Target(manifest["target"])
    precision = manifest.get("precision", "fp32")
    check_log(log_dir, target, precision)
    model, inputs = _tuned_model(manifest)
    mod, report = pipeline.import_and_fuse(model, inputs, target,
                                           lego=manifest.get("lego_pass", True))
    if precision == "bf16":      # the kernels compile(precision="bf16") builds
        mod = to_bf16(mod, target)[0]
    mod = pipeline.lower(mod, target)
    lego_kernels = {gv.name_hint for gv in mod.get_global_vars()
                    if gv.name_hint.startswith("fused_lego_conv2d")}
    assert len(lego_kernels) >= 1 or not manifest.get("lego_pass", True)
    _, tuned, _ = pipeline.schedule(mod, target, open_database([log_dir], target, strict=True,
                                                                   precision=precision))
    missing = sorted(lego_kernels - set(tuned))
    assert not missing, f"no tuned record in {log_dir} for {missing}"


def _tuned_model(manifest: dict):
    """The model a log was tuned for: a zoo model, or the layer benchmark's kernels."""
    if manifest["model"] == "bench_layers":
        model = BenchLayers().eval()
        return model, model.example
    assert manifest["model"] in MODELS
    model, x = get_model(manifest["model"], batch=manifest["batch"])
    return model, (x,)


def test_every_shipped_log_comes_from_real_hardware_that_its_manifest_names():
    for log_dir in LOGS:
        manifest = read_manifest(log_dir)
        assert manifest.get("emulated", False) is False, f"{log_dir} was tuned under emulation"
        assert manifest.get("hardware") and "unknown" not in manifest["hardware"], log_dir


def test_every_shipped_log_was_checked_against_the_default_schedule():
    """Each log went through tune's check (a record slower than the default gives way), and
    each verdict follows from its own times."""
    for log_dir in LOGS:
        manifest = read_manifest(log_dir)
        assert "checked" in manifest, f"{log_dir} was not checked against the default schedule"
        for verdict in manifest["checked"]:
            faster = "tuned" if verdict["tuned_ms"] < verdict["default_ms"] else "default"
            assert verdict["kept"] == faster, (log_dir, verdict)
