"""Serving throughput: requests per second when 1, 2 and 4 client threads call one model
at once (as a server's thread pool does), lego-tvm next to ONNX Runtime's ``run`` from the
same threads on the dense-folded model. Each client thread runs its own lego-tvm VM
(``runtime.Model``); ONNX Runtime documents ``InferenceSession.run`` as thread-safe.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from ..support.threads import threads_in_use
from .runtimes import runtime_runs

CLIENTS = (1, 2, 4)
THROUGHPUT_LABELS = {"lego_tvm": "lego-tvm", "onnxruntime": "ONNX Runtime, dense-folded"}


def requests_per_second(run: Callable[[], object], clients: int, requests: int) -> float:
    """``requests`` calls of ``run`` from ``clients`` threads (after one warm-up call per
    thread), per second of wall time."""
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda _: run(), range(clients * 2)))
        start = time.perf_counter()
        list(pool.map(lambda _: run(), range(requests)))
        return requests / (time.perf_counter() - start)


def bench_throughput(name: str, requests: int = 200, clients=CLIENTS,
                     progress: Callable[[str], None] = print) -> list[dict]:
    """One row per client count: requests per second of lego-tvm (default schedules) and of
    ONNX Runtime when it is installed."""
    from ..compiler import compile as lego_compile
    from ..nn.fold import fold_lego_to_dense
    from ..nn.zoo import get_model

    model, example = get_model(name)
    x = np.ascontiguousarray(example.numpy())
    progress(f"[throughput {name}] compiling")
    compiled = lego_compile(model, (example,), tuning_logs=None)
    with torch.no_grad():
        reference = model(example).numpy()
    runs = {"lego_tvm": lambda: compiled(x)}
    competitors, _ = runtime_runs(fold_lego_to_dense(model), example, reference,
                                  threads_in_use(), progress, f"throughput {name}")
    if "onnxruntime" in competitors:
        runs["onnxruntime"] = competitors["onnxruntime"]
    rows = []
    for count in clients:
        progress(f"[throughput {name}] {count} client thread(s), {requests} requests each way")
        rows.append({"model": name, "clients": count,
                     "requests_per_s": {key: requests_per_second(run, count, requests)
                                        for key, run in runs.items()}})
    return rows


def format_throughput_table(rows: list[dict]) -> str:
    keys = [k for k in THROUGHPUT_LABELS if any(k in r["requests_per_s"] for r in rows)]
    lines = ["| model | client threads | " + " | ".join(f"{THROUGHPUT_LABELS[k]}, requests/s"
                                                     for k in keys) + " |",
             "|---|---:|" + "---:|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['clients']} | " + " | ".join(
            f"{r['requests_per_s'][k]:.1f}" if k in r["requests_per_s"] else "-" for k in keys)
            + " |")
    return "\n".join(lines)
