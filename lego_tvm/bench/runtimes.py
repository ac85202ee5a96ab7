"""The runtimes people deploy a dense model on, as benchmark competitors: ONNX Runtime (CPU
execution provider) and OpenVINO (CPU device), both on the dense-folded model exported with
``torch.onnx.export``, with the benchmark's thread count.

Both are optional (``pip install "lego-tvm[bench]"``); a missing one is skipped with a line
saying how to install it. OpenVINO runs twice: in fp32 (``INFERENCE_PRECISION_HINT`` f32,
a competitor like the others) and in its default precision, which is bf16 on CPUs that have
it: a separate column, never counted as the fp32 bar, with its measured error.
"""
from __future__ import annotations

import importlib
import os
import tempfile
import warnings
from typing import Callable

import numpy as np
import torch

from ..support.accuracy import max_relative_error

RUNTIME_LABELS = {"onnxruntime": "ONNX Runtime, dense-folded",
                  "openvino": "OpenVINO fp32, dense-folded",
                  "openvino_default": "OpenVINO default precision, dense-folded"}
# Competitors whose arithmetic is not fp32: shown, never the bar "vs best other" is set by
# (lego-tvm in bf16 too: bench/bf16.py).
NOT_FP32 = ("openvino_default", "lego_tvm_bf16")
INSTALL = 'pip install "lego-tvm[bench]"'
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "openvino_default": "openvino"}


def why_missing(key: str) -> str | None:
    """Why the runtime behind ``key`` cannot run here (its package, or ONNX export, is
    missing), or None."""
    for package in (_PACKAGES[key], "onnx"):
        try:
            importlib.import_module(package)
        except ImportError:
            return f"{package} is not installed ({INSTALL})"
    return None


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: str) -> None:
    """``module`` as an ONNX file with one input ``x`` (TorchScript exporter, opset 17)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), path, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])


def _onnxruntime(path: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def _openvino(path: str, threads: int, fp32: bool) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if fp32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    request = ov.Core().compile_model(path, "CPU", config).create_infer_request()

    def run(x):
        request.infer({0: x})
        return request.get_output_tensor(0).data
    return run


def precision_of_openvino_default() -> str:
    """What OpenVINO's CPU plugin computes in by default here (``bf16`` or ``f32``)."""
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if "BF16" in capabilities else "f32"


def error_fields(errors: dict[str, float]) -> dict:
    """What a result row records of the runtimes: each one's error against PyTorch, and the
    precision OpenVINO's default ran in (the table shows both beside its time)."""
    fields = {"competitor_errors": errors}
    if "openvino_default" in errors:
        fields["openvino_default_precision"] = precision_of_openvino_default()
    return fields


def runtime_runs(dense: torch.nn.Module, example: torch.Tensor, reference: np.ndarray,
                 threads: int, progress: Callable[[str], None], name: str,
                 keys=tuple(RUNTIME_LABELS)
                 ) -> tuple[dict[str, Callable[[], object]], dict[str, float]]:
    """``(runs, errors)``: a no-argument call of each installed runtime of ``keys`` on
    ``example`` and its max relative error against ``reference`` (PyTorch's output)."""
    available = {}
    for key in keys:
        reason = why_missing(key)
        if reason:
            progress(f"[{name}] skipping {RUNTIME_LABELS[key]}: {reason}")
        else:
            available[key] = True
    if not available:
        return {}, {}
    x = np.ascontiguousarray(example.numpy())
    runs, errors = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "dense.onnx")
        progress(f"[{name}] exporting the dense-folded model to ONNX")
        export_onnx(dense, example, path)
        makers = {"onnxruntime": lambda: _onnxruntime(path, threads),
                  "openvino": lambda: _openvino(path, threads, fp32=True),
                  "openvino_default": lambda: _openvino(path, threads, fp32=False)}
        for key in available:
            progress(f"[{name}] preparing {RUNTIME_LABELS[key]}")
            run = makers[key]()
            errors[key] = max_relative_error(run(x), reference)
            runs[key] = (lambda r: lambda: r(x))(run)
    return runs, errors
