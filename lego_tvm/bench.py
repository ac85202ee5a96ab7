"""Whole-model speed: lego-tvm against what users would otherwise run, side by side.

All competitors run in one process on the same random input, with the same thread count,
each timed as the median of ``repeat`` runs after ``warmup`` runs:

- ``torch_lego``: PyTorch eager with the Lego module (the authors' formulation);
- ``torch_dense``: PyTorch eager with every Lego layer folded into a dense ``Conv2d``;
- ``tvm_no_pass``: TVM on the same imported model without the Lego pass, same schedules;
- ``lego_tvm``: the compiled model.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable

import numpy as np
import torch

from .targets import host_target

COMPETITORS = ("torch_lego", "torch_dense", "tvm_no_pass", "lego_tvm")
LABELS = {"torch_lego": "PyTorch eager, Lego module",
          "torch_dense": "PyTorch eager, dense-folded",
          "tvm_no_pass": "TVM without the Lego pass",
          "lego_tvm": "lego-tvm"}


def set_threads(threads: int) -> None:
    """Use ``threads`` threads in PyTorch and in TVM's runtime pool.

    TVM reads ``TVM_NUM_THREADS`` when its pool starts, which can be as early as the first
    constant folding: call this before compiling anything.
    """
    os.environ["TVM_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def median_ms(run: Callable[[], object], repeat: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def machine() -> dict:
    import tvm

    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    return {"cpu": cpu, "target": str(host_target()), "python": platform.python_version(),
            "torch": torch.__version__, "tvm": tvm.__version__,
            "tvm_threads": int(tvm.get_global_func("runtime.NumThreads")()),
            "torch_threads": torch.get_num_threads()}


def bench_model(name: str, repeat: int = 30, warmup: int = 5, batch: int = 1,
                progress: Callable[[str], None] = print, show: Callable[[str], None] | None = None
                ) -> dict:
    """Time every competitor on zoo model ``name``; also checks lego-tvm against PyTorch.

    ``show``, if given, receives the lego-tvm report and the check's result as text."""
    from .compiler import compile as lego_compile
    from .zoo import fold_lego_to_dense, get_model

    model, example = get_model(name, batch=batch)
    dense = fold_lego_to_dense(model)
    x = example.numpy()
    progress(f"[{name}] compiling with lego-tvm")
    fused = lego_compile(model, (example,))
    progress(f"[{name}] compiling without the Lego pass")
    plain = lego_compile(model, (example,), fuse_lego=False)
    with torch.no_grad():
        reference = model(example).numpy()
    error = float(np.abs(fused(x) - reference).max() / np.abs(reference).max())
    if show is not None:
        show(f"{fused.report}\ncheck against PyTorch on a random input: max error / max |output|"
             f" = {error:.2e} ({'ok' if error <= 1e-4 else 'MISMATCH'})")
    runs = {"torch_lego": lambda: model(example), "torch_dense": lambda: dense(example),
            "tvm_no_pass": lambda: plain(x), "lego_tvm": lambda: fused(x)}
    times = {}
    with torch.no_grad():
        for key in COMPETITORS:
            progress(f"[{name}] timing {LABELS[key]} ({warmup} warm-up + {repeat} runs)")
            times[key] = median_ms(runs[key], repeat, warmup)
    return {"model": name, "batch": batch, "input_shape": list(example.shape),
            "median_ms": times, "max_rel_error": error,
            "lego_layers_fused": len(fused.report.layers)}


def format_table(results: list[dict]) -> str:
    head = f"| {'model':<14} | " + " | ".join(f"{LABELS[k]:>27}" for k in COMPETITORS) + \
        " | lego-tvm speed-up vs best other |"
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in results:
        t = r["median_ms"]
        best_other = min(v for k, v in t.items() if k != "lego_tvm")
        lines.append(f"| {r['model']:<14} | " + " | ".join(f"{t[k]:>24.2f} ms" for k in COMPETITORS)
                     + f" | {best_other / t['lego_tvm']:>30.2f}x |")
    return "\n".join(lines)


def write_outputs(results: list[dict], out_dir: str, info: dict) -> dict[str, str]:
    """JSON with everything, and a PNG bar chart of the medians."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "bench.json"), "png": os.path.join(out_dir, "bench.png")}
    with open(paths["json"], "w") as f:
        json.dump({"machine": info, "results": results}, f, indent=1)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results):
        values = [r["median_ms"][k] for k in COMPETITORS]
        ax.barh([LABELS[k] for k in COMPETITORS], values,
                color=["#999", "#777", "#bbb", "#d62728"])
        ax.set_title(f"{r['model']} (batch {r['batch']})")
        ax.set_xlabel("median latency, ms (lower is better)")
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.1f}", va="center")
    fig.suptitle(f"{info['cpu']}, {info['tvm_threads']} threads")
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=100)
    plt.close(fig)
    return paths
