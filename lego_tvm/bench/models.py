"""Benchmarks: lego-tvm against what users would otherwise run, side by side in one process.

Whole models (``bench_model``) and single layers (``layers.py``), all competitors on the
same random input with the same thread count, each the median of ``repeat`` runs after
``warmup`` runs. Results go to JSON, a markdown table and a PNG chart. Model competitors:

- ``torch_lego``: PyTorch eager with the Lego module (the authors' formulation);
- ``torch_dense``: PyTorch eager with every Lego layer folded into a dense ``Conv2d``;
- ``torch_compile_dense``: ``torch.compile`` of the dense-folded model;
- ``tvm_no_pass``: TVM on the same imported model without the Lego pass, same schedules,
  and ``tvm_no_pass_tuned`` with the shipped tuning logs for it, when there are any;
- ``lego_tvm``: the compiled model with default schedules, and ``lego_tvm_tuned`` with the
  shipped tuning logs, when there are any for this machine;
- ``lego_tvm_nchwc``: default schedules, NCHW[x]c tensors between fused kernels
  (``layout="NCHWc"``);
- ``lego_tvm_onednn``: as tuned (or default), with each kernel's Lego maps computed by
  oneDNN where that measured faster at compile time (``compute_once="auto"``), when oneDNN
  is installed.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Callable

import torch

from ..support.targets import TargetError, host_target, resolve_target, why_not_runnable_here
from ..support.accuracy import max_relative_error, verdict
from ..support.timing import median_ms
from ..tuning.logs import TuningLogError, check_log, shipped_logs

COMPETITORS = ("torch_lego", "torch_dense", "torch_compile_dense", "tvm_no_pass",
               "tvm_no_pass_tuned", "lego_tvm", "lego_tvm_nchwc", "lego_tvm_tuned",
               "lego_tvm_onednn")
LABELS = {"torch_lego": "PyTorch eager, Lego module",
          "torch_dense": "PyTorch eager, dense-folded",
          "torch_compile_dense": "torch.compile, dense-folded",
          "tvm_no_pass": "TVM without the Lego pass",
          "tvm_no_pass_tuned": "TVM without the pass, tuned",
          "lego_tvm": "lego-tvm, default schedules",
          "lego_tvm_nchwc": "lego-tvm, default schedules, NCHWc between layers",
          "lego_tvm_tuned": "lego-tvm, tuned",
          "lego_tvm_onednn": "lego-tvm, tuned, oneDNN maps where faster"}
OURS = ("lego_tvm", "lego_tvm_nchwc", "lego_tvm_tuned", "lego_tvm_onednn")


def machine(threads: int) -> dict:
    import tvm

    from .peak import fma_peak_gflops

    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    return {"cpu": cpu, "target": str(host_target()), "python": platform.python_version(),
            "torch": torch.__version__, "tvm": tvm.__version__,
            "tvm_threads": int(tvm.get_global_func("runtime.NumThreads")()),
            "torch_threads": torch.get_num_threads(),
            "fma_peak_gflops": fma_peak_gflops(threads),
            "date": time.strftime("%Y-%m-%d")}


def bench_model(name: str, repeat: int = 30, warmup: int = 5, batch: int = 1,
                use_torch_compile: bool = True, progress: Callable[[str], None] = print,
                show: Callable[[str], None] | None = None, target=None) -> dict:
    """Time every competitor on zoo model ``name``; also checks lego-tvm against PyTorch.

    ``target``: what the TVM competitors are compiled for (default: this CPU); it must run
    here (a remote device: ``remote_bench``). ``show``, if given, receives the lego-tvm
    report and the check's result as text."""
    from ..compiler import compile as lego_compile
    from ..nn.fold import fold_lego_to_dense
    from ..nn.zoo import get_model

    model, example = get_model(name, batch=batch)
    dense = fold_lego_to_dense(model)
    x = example.numpy()
    runs = {"torch_lego": lambda: model(example), "torch_dense": lambda: dense(example)}
    compiled = {}
    target = resolve_target(target)
    if why_not_runnable_here(target):
        raise TargetError(f"cannot time {name} for this target here: "
                          f"{why_not_runnable_here(target)}; give an RPC tracker or server")
    from ..backend.onednn import why_unavailable

    variants = (("lego_tvm", True, False), ("lego_tvm_nchwc", True, False),
                ("lego_tvm_tuned", True, True), ("lego_tvm_onednn", True, True),
                ("tvm_no_pass", False, False), ("tvm_no_pass_tuned", False, True))
    for key, fuse, tuned in variants:
        layout = "NCHWc" if key == "lego_tvm_nchwc" else "NCHW"
        compute_once = "auto" if key == "lego_tvm_onednn" else "tvm"
        if compute_once == "auto" and why_unavailable():
            progress(f"[{name}] skipping {LABELS[key]}: {why_unavailable()}")
            continue
        logs = None
        if tuned:
            manifests = {d: _manifest_if_applies(d, target) for d in shipped_logs(target, fuse)}
            logs = [d for d, m in manifests.items()
                    if (m.get("model"), m.get("batch")) == (name, batch)]
            if not logs and compute_once == "tvm":
                progress(f"[{name}] no tuning log for this model and machine: skipping "
                         f"{LABELS[key]}")
                continue
        progress(f"[{name}] compiling: {LABELS[key]}")
        candidate = lego_compile(model, (example,), target, fuse_lego=fuse, tuning_logs=logs,
                                 compute_once=compute_once, layout=layout, progress=progress)
        compiled[key] = candidate
        runs[key] = (lambda c: lambda: c(x))(candidate)
    fused = compiled["lego_tvm"]
    with torch.no_grad():
        reference = model(example).numpy()
    error = max_relative_error(fused(x), reference)
    if show is not None:
        show(f"{fused.report}\ncheck against PyTorch on a random input: max error / max "
             f"|output| = {error:.2e} ({verdict(error)})")
    times = time_side_by_side(name, runs, COMPETITORS, LABELS, dense, example,
                              use_torch_compile, repeat, warmup, progress)
    result = {"model": name, "batch": batch, "input_shape": list(example.shape),
              "median_ms": times, "max_rel_error": error,
              "lego_layers_fused": len(fused.report.layers)}
    result["max_rel_error_nchwc"] = max_relative_error(compiled["lego_tvm_nchwc"](x), reference)
    if "lego_tvm_onednn" in compiled:
        result["max_rel_error_onednn"] = max_relative_error(compiled["lego_tvm_onednn"](x),
                                                            reference)
        report = compiled["lego_tvm_onednn"].report
        result["compute_once"] = [c.as_dict() for c in report.compute_once]
        result["compute_once_check"] = report.compute_once_check
    return result


def time_side_by_side(name: str, runs: dict, order, labels: dict, dense: torch.nn.Module,
                      example: torch.Tensor, use_torch_compile: bool, repeat: int, warmup: int,
                      progress: Callable[[str], None]) -> dict[str, float]:
    """Median milliseconds of every competitor in ``runs`` (plus ``torch.compile`` of
    ``dense``, compiled here, when asked), in ``order``, one after the other."""
    runs = dict(runs)
    with torch.no_grad():
        if use_torch_compile:
            progress(f"[{name}] torch.compile of the dense-folded model")
            compiled_dense = torch.compile(dense)
            compiled_dense(example)
            runs["torch_compile_dense"] = lambda: compiled_dense(example)
        times = {}
        for key in order:
            if key in runs:
                progress(f"[{name}] timing {labels[key]} ({warmup} warm-up + {repeat} runs)")
                times[key] = median_ms(runs[key], repeat, warmup)
    return times


def _manifest_if_applies(log_dir, target) -> dict:
    """The manifest of a log made for ``target`` (and this TVM), else an empty dict."""
    try:
        return check_log(log_dir, target)
    except TuningLogError:
        return {}


def format_model_table(results: list[dict]) -> str:
    keys = [k for k in COMPETITORS if any(k in r["median_ms"] for r in results)]
    lines = ["| model | " + " | ".join(LABELS[k] for k in keys) + " | lego-tvm vs best other |",
             "|---|" + "---:|" * (len(keys) + 1)]
    for r in results:
        t = r["median_ms"]
        best_other = min(v for k, v in t.items() if k not in OURS)
        best_ours = min(v for k, v in t.items() if k in OURS)
        lines.append(f"| {r['model']} (batch {r['batch']}) | "
                     + " | ".join(f"{t[k]:.2f} ms" if k in t else "-" for k in keys)
                     + f" | {best_other / best_ours:.2f}x |")
    return "\n".join(lines)
