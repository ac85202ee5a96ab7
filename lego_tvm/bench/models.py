"""Benchmarks: lego-tvm against what users would otherwise run, side by side in one process.

Whole models (``bench_model``) and single layers (``layers.py``), all competitors on the
same random input with the same thread count, each the median of ``repeat`` runs after
``warmup`` runs. Results go to JSON, a markdown table and a PNG chart. Model competitors:

- ``torch_lego``: PyTorch eager with the Lego module (the authors' formulation);
- ``torch_dense``: PyTorch eager with every Lego layer folded into a dense ``Conv2d``;
- ``torch_compile_dense``: ``torch.compile`` of the dense-folded model;
- ``onnxruntime``, ``openvino``: the dense-folded model on ONNX Runtime and OpenVINO (fp32),
  and ``openvino_default`` in OpenVINO's default precision (bf16 where the CPU has it; shown,
  never the fp32 bar), when they are installed (``runtimes.py``);
- ``tvm_no_pass``: TVM on the same imported model without the Lego pass, same schedules,
  and ``tvm_no_pass_tuned`` with the shipped tuning logs for it, when there are any;
- ``lego_tvm``: the compiled model with default schedules, and ``lego_tvm_tuned`` with the
  shipped tuning logs, when there are any for this machine;
- ``lego_tvm_nchwc``: default schedules, NCHW[x]c tensors between fused kernels
  (``layout="NCHWc"``);
- ``lego_tvm_auto``: as tuned (or default), with each kernel's Lego maps computed the way
  that measured fastest at compile time (``compute_once="auto"``: direct, Winograd
  F(2x2)/F(4x4), or oneDNN when it is installed);
- ``lego_tvm_bf16``: ``precision="bf16"``, where the CPU has AVX512_BF16 (``bf16.py``; shown
  beside OpenVINO's default precision, never the fp32 bar).
"""
from __future__ import annotations

import platform
import time
from typing import Callable

import torch

from ..support.targets import (TargetError, host_cpu_name, host_target, resolve_target,
                               why_not_runnable_here)
from ..support.accuracy import max_relative_error, verdict
from ..support.threads import threads_in_use
from ..support.timing import ROUNDS, median_ms
from . import bf16
from .runtimes import NOT_FP32, RUNTIME_LABELS, error_fields, runtime_runs
from ..tuning.logs import TuningLogError, check_log, shipped_logs

COMPETITORS = ("torch_lego", "torch_dense", "torch_compile_dense", "onnxruntime", "openvino",
               "openvino_default", bf16.KEY, "tvm_no_pass", "tvm_no_pass_tuned", "lego_tvm",
               "lego_tvm_nchwc", "lego_tvm_tuned", "lego_tvm_auto")
LABELS = {"torch_lego": "PyTorch eager, Lego module",
          "torch_dense": "PyTorch eager, dense-folded",
          "torch_compile_dense": "torch.compile, dense-folded",
          **RUNTIME_LABELS,
          bf16.KEY: bf16.LABEL,
          "tvm_no_pass": "TVM without the Lego pass",
          "tvm_no_pass_tuned": "TVM without the pass, tuned",
          "lego_tvm": "lego-tvm, default schedules",
          "lego_tvm_nchwc": "lego-tvm, default schedules, NCHWc between layers",
          "lego_tvm_tuned": "lego-tvm, tuned",
          "lego_tvm_auto": "lego-tvm, tuned, fastest maps per kernel (Winograd, oneDNN)"}
OURS = ("lego_tvm", "lego_tvm_nchwc", "lego_tvm_tuned", "lego_tvm_auto")


def machine(threads: int) -> dict:
    import tvm

    from .peak import amx_peak_gflops, bf16_peak_gflops, fma_peak_gflops

    return {"cpu": host_cpu_name(), "target": str(host_target()), "python": platform.python_version(),
            "torch": torch.__version__, "tvm": tvm.__version__,
            "tvm_threads": int(tvm.get_global_func("runtime.NumThreads")()),
            "torch_threads": torch.get_num_threads(),
            "fma_peak_gflops": fma_peak_gflops(threads),
            "bf16_peak_gflops": bf16_peak_gflops(threads),
            "amx_peak_gflops": amx_peak_gflops(threads),
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
                ("lego_tvm_tuned", True, True), ("lego_tvm_auto", True, True),
                ("tvm_no_pass", False, False), ("tvm_no_pass_tuned", False, True))
    for key, fuse, tuned in variants:
        layout = "NCHWc" if key == "lego_tvm_nchwc" else "NCHW"
        compute_once = "auto" if key == "lego_tvm_auto" else "tvm"
        if compute_once == "auto" and why_unavailable():
            progress(f"[{name}] {LABELS[key]}: without oneDNN ({why_unavailable()})")
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
    runtime_timed, runtime_errors = runtime_runs(dense, example, reference, threads_in_use(),
                                                 progress, name)
    runs.update(runtime_timed)
    bf16_fields = {}
    bf16.add_bf16(runs, runtime_errors, bf16_fields,
                  bf16.bf16_competitor(model, example, reference, target, progress, name))
    if show is not None:
        show(f"{fused.report}\ncheck against PyTorch on a random input: max error / max "
             f"|output| = {error:.2e} ({verdict(error)})")
    times = time_side_by_side(name, runs, COMPETITORS, LABELS, dense, example,
                              use_torch_compile, repeat, warmup, progress)
    result = {"model": name, "batch": batch, "input_shape": list(example.shape),
              "median_ms": times, "max_rel_error": error,
              "lego_layers_fused": len(fused.report.layers),
              **error_fields(runtime_errors), **bf16_fields,
              # Per batch: MACs of the dense model and of the Lego one as lego-tvm runs it.
              "macs": {"dense": fused.report.totals["model_dense_macs"],
                       "lego": fused.report.totals["model_lego_macs"]}}
    result["max_rel_error_nchwc"] = max_relative_error(compiled["lego_tvm_nchwc"](x), reference)
    if "lego_tvm_auto" in compiled:
        result["max_rel_error_auto"] = max_relative_error(compiled["lego_tvm_auto"](x),
                                                            reference)
        report = compiled["lego_tvm_auto"].report
        result["compute_once"] = [c.as_dict() for c in report.compute_once]
        result["compute_once_check"] = report.compute_once_check
    return result


def time_side_by_side(name: str, runs: dict, order, labels: dict, dense: torch.nn.Module,
                      example: torch.Tensor, use_torch_compile: bool, repeat: int, warmup: int,
                      progress: Callable[[str], None], rounds: int = ROUNDS
                      ) -> dict[str, float]:
    """Milliseconds of every competitor in ``runs`` (plus ``torch.compile`` of ``dense``,
    compiled here, when asked): each competitor runs in a block of its own (the median of
    ``repeat`` runs after ``warmup``), the blocks alternate in ``order`` over ``rounds``
    rounds, and each keeps its best block. Single calls are never interleaved: a runtime
    whose pool threads spin after a call slows whatever runs next (PyTorch calls took 8 ms
    instead of 0.1 ms right after ONNX Runtime's)."""
    runs = dict(runs)
    with torch.no_grad():
        if use_torch_compile:
            progress(f"[{name}] torch.compile of the dense-folded model")
            compiled_dense = torch.compile(dense)
            compiled_dense(example)
            runs["torch_compile_dense"] = lambda: compiled_dense(example)
        keys = [key for key in order if key in runs]
        times = {key: float("inf") for key in keys}
        for round_ in range(1, rounds + 1):
            progress(f"[{name}] timing round {round_}/{rounds}: {len(keys)} competitors, "
                     f"{warmup} warm-up + {repeat} runs each")
            for key in keys:
                times[key] = min(times[key], median_ms(runs[key], repeat, warmup))
    return times


def fastest(times: dict[str, float], among) -> str:
    """The key of the fastest competitor in ``among`` that ran and computes in fp32."""
    return min((k for k in times if k in among and k not in NOT_FP32), key=times.get)


def _manifest_if_applies(log_dir, target) -> dict:
    """The manifest of a log made for ``target`` (and this TVM), else an empty dict."""
    try:
        return check_log(log_dir, target)
    except TuningLogError:
        return {}


def format_model_table(results: list[dict], peak: float | None = None) -> str:
    """The model table; with the measured ``peak`` (GFLOP/s), also each side's share of it:
    lego-tvm counted on the MACs it performs, the fastest other on the dense model's."""
    keys = [k for k in COMPETITORS if any(k in r["median_ms"] for r in results)]
    efficiency = peak and all("macs" in r for r in results)
    lines = ["| model | " + " | ".join(LABELS[k] for k in keys)
             + " | lego-tvm vs fastest fp32 other | bf16: lego-tvm vs OpenVINO default |"
             + (" % of FMA peak: lego-tvm / fastest other |" if efficiency else ""),
             "|---|" + "---:|" * (len(keys) + 2 + bool(efficiency))]
    for r in results:
        t = r["median_ms"]
        bar = fastest(t, [k for k in COMPETITORS if k not in OURS])
        best_ours = min(v for k, v in t.items() if k in OURS)
        line = (f"| {r['model']} (batch {r['batch']}) | "
                + " | ".join(time_cell(r, k) for k in keys)
                + f" | {t[bar] / best_ours:.2f}x ({LABELS[bar]}) | {bf16.vs_openvino_bf16(t)} |")
        if efficiency:
            share = [100 * 2 * r["macs"][kind] / ms / 1e6 / peak
                     for kind, ms in (("lego", best_ours), ("dense", t[bar]))]
            line += f" {share[0]:.0f}% / {share[1]:.0f}% |"
        lines.append(line)
    return "\n".join(lines)


def time_cell(result: dict, key: str) -> str:
    """A table cell: the time; for a competitor that is not fp32, also its precision and
    its measured error against PyTorch."""
    t = result["median_ms"]
    if key not in t:
        return "-"
    if key not in NOT_FP32:
        return f"{t[key]:.2f} ms"
    precision = result.get(f"{key}_precision", "?")
    return f"{t[key]:.2f} ms ({precision}, error {result['competitor_errors'][key]:.1e})"
