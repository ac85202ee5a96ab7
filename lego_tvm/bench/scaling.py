"""How the speed-up holds as the work grows: one zoo model at several batch sizes, on 1 and 2
threads, lego-tvm (default schedules: the shipped logs are for batch 1) against PyTorch eager
with the dense-folded weights (oneDNN), side by side in one process.

The thread count changes in place: ``torch.set_num_threads`` and TVM's
``runtime.config_threadpool``. Each batch is compiled once and checked against the
dense-folded model. Runs per point shrink with the batch (``repeat // batch``, at least 3).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..support.accuracy import max_relative_error
from ..support.threads import set_threads
from ..support.timing import median_ms

BATCHES = (1, 8, 32)
THREADS = (1, 2)
SCALING_LABELS = {"torch_dense": "PyTorch eager, dense-folded", "lego_tvm": "lego-tvm"}


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
                error = max_relative_error(fused(x), dense(example).numpy())
            runs = {"torch_dense": lambda: dense(example), "lego_tvm": lambda: fused(x)}
            reps, warm = max(3, repeat // batch), max(1, warmup // batch)
            for count in threads:
                set_threads(count)
                times = {}
                with torch.no_grad():
                    for key, run in runs.items():
                        progress(f"[{name} batch {batch}, {count} thread(s)] timing "
                                 f"{SCALING_LABELS[key]} ({warm} warm-up + {reps} runs)")
                        times[key] = median_ms(run, reps, warm)
                results.append({"model": name, "batch": batch, "threads": count,
                                "median_ms": times, "runs": reps,
                                "max_rel_error_vs_dense": error})
    finally:
        set_threads(before)
    return results


def format_scaling_table(results: list[dict]) -> str:
    lines = ["| model | batch | threads | PyTorch eager, dense-folded | lego-tvm | "
             "lego-tvm images/s | lego-tvm speed-up |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        t = r["median_ms"]
        lines.append(f"| {r['model']} | {r['batch']} | {r['threads']} | "
                     f"{t['torch_dense']:.1f} ms | {t['lego_tvm']:.1f} ms | "
                     f"{1e3 * r['batch'] / t['lego_tvm']:.1f} | "
                     f"{t['torch_dense'] / t['lego_tvm']:.2f}x |")
    return "\n".join(lines)
