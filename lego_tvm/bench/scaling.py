"""How the speed-up holds as the work grows: one zoo model at several batch sizes, on 1 and 2
threads, lego-tvm (default schedules: the shipped logs are for batch 1) against PyTorch eager
with the dense-folded weights (oneDNN) and, when installed, ONNX Runtime and OpenVINO (fp32)
on the same dense-folded model, side by side in one process, in alternating blocks.

The thread count changes in place: ``torch.set_num_threads`` and TVM's
``runtime.config_threadpool``. Each batch is compiled once and checked against the
dense-folded model (the runtimes, made for each thread count, are checked too). Runs per
block shrink with the batch (``repeat // batch``, at least 3); each competitor keeps its best
block of ``ROUNDS``.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..support.accuracy import max_relative_error
from ..support.threads import set_threads
from ..support.timing import ROUNDS, median_ms
from .runtimes import NOT_FP32, RUNTIME_LABELS, runtime_runs

BATCHES = (1, 8, 32)
THREADS = (1, 2)
FP32_RUNTIMES = tuple(k for k in RUNTIME_LABELS if k not in NOT_FP32)
SCALING_LABELS = {"torch_dense": "PyTorch eager, dense-folded",
                  **{k: RUNTIME_LABELS[k] for k in FP32_RUNTIMES}, "lego_tvm": "lego-tvm"}


def bench_scaling(name: str = "lego_resnet50", batches=BATCHES, threads=THREADS,
                  repeat: int = 30, warmup: int = 5,
                  progress: Callable[[str], None] = print) -> list[dict]:
    from ..compiler import compile as lego_compile
    from ..nn.fold import fold_lego_to_dense
    from ..nn.zoo import get_model

    before = torch.get_num_threads()
    results = []
    try:
        for batch in batches:
            model, example = get_model(name, batch=batch)
            dense = fold_lego_to_dense(model)
            progress(f"[{name} batch {batch}] compiling lego-tvm")
            fused = lego_compile(model, (example,), tuning_logs=None)
            x = example.numpy()
            with torch.no_grad():
                reference = dense(example).numpy()
            error = max_relative_error(fused(x), reference)
            reps, warm = max(3, repeat // batch), max(1, warmup // batch)
            for count in threads:
                set_threads(count)
                runs = {"torch_dense": lambda: dense(example), "lego_tvm": lambda: fused(x)}
                others, errors = runtime_runs(dense, example, reference, count, progress,
                                              f"{name} batch {batch}, {count} thread(s)",
                                              keys=FP32_RUNTIMES)
                runs.update(others)
                times = {key: float("inf") for key in runs}
                with torch.no_grad():
                    for round_ in range(ROUNDS):
                        for key, run in runs.items():
                            progress(f"[{name} batch {batch}, {count} thread(s)] round "
                                     f"{round_ + 1}/{ROUNDS}: {SCALING_LABELS[key]} "
                                     f"({warm} warm-up + {reps} runs)")
                            times[key] = min(times[key], median_ms(run, reps, warm))
                results.append({"model": name, "batch": batch, "threads": count,
                                "median_ms": times, "runs": reps,
                                "max_rel_error_vs_dense": error,
                                "competitor_errors": errors})
    finally:
        set_threads(before)
    return results


def format_scaling_table(results: list[dict]) -> str:
    keys = [k for k in SCALING_LABELS if k != "lego_tvm"
            and any(k in r["median_ms"] for r in results)]
    lines = ["| model | batch | threads | " + " | ".join(SCALING_LABELS[k] for k in keys)
             + " | lego-tvm | lego-tvm images/s | lego-tvm vs fastest other |",
             "|---|---:|---:|" + "---:|" * (len(keys) + 3)]
    for r in results:
        t = r["median_ms"]
        bar = min((k for k in keys if k in t), key=t.get)
        lines.append(f"| {r['model']} | {r['batch']} | {r['threads']} | "
                     + " | ".join(f"{t[k]:.1f} ms" if k in t else "-" for k in keys)
                     + f" | {t['lego_tvm']:.1f} ms | {1e3 * r['batch'] / t['lego_tvm']:.1f} | "
                     f"{t[bar] / t['lego_tvm']:.2f}x ({SCALING_LABELS[bar]}) |")
    return "\n".join(lines)
