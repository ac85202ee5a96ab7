"""A benchmark run written out: ``bench.json`` (everything), ``bench.md`` (the tables) and
``bench.png`` (one chart per table)."""
from __future__ import annotations

import json
import os

import numpy as np

from .layers import DENSE, LAYER_LABELS, ours_ms
from . import bf16
from .models import COMPETITORS, LABELS, OURS, fastest
from .cross_target import plot_targets
from .stages import plot_stages


def write_outputs(models: list[dict], layers: list[dict], markdown: str, out_dir: str,
                  info: dict, scaling: list[dict] | None = None,
                  stages: list[dict] | None = None,
                  kernels: dict[str, list[dict]] | None = None,
                  throughput: list[dict] | None = None,
                  overhead: dict | None = None,
                  estimates: list[dict] | None = None,
                  targets: list[dict] | None = None) -> dict[str, str]:
    """``bench.json`` (everything), ``bench.md`` (the tables) and ``bench.png`` (charts)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"bench.{ext}") for ext in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump({"machine": info, "models": models, "layers": layers,
                   "scaling": scaling or [], "stages": stages or [], "kernels": kernels or {},
                   "throughput": throughput or [], "overhead_us": overhead or {},
                   "estimates": estimates or [], "targets": targets or []},
                  f, indent=1)
    with open(paths["md"], "w") as f:
        f.write(markdown + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("model", r, LABELS) for r in models]
    if layers:
        panels.append(("layers", layers, LAYER_LABELS))
    if scaling:
        panels.append(("scaling", scaling, None))
    if stages:
        panels.append(("stages", stages, None))
    if targets and any("speedup" in r for r in targets):
        panels.append(("targets", targets, None))
    if not panels:       # only tables (the call overhead, estimates): no chart to draw
        del paths["png"]
        return paths
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (kind, data, labels) in zip(axes[0], panels):
        if kind == "model":
            keys = [k for k in COMPETITORS if k in data["median_ms"]]
            values = [data["median_ms"][k] for k in keys]
            ax.barh([labels[k] for k in keys], values,
                    color=["#d62728" if k in OURS or k == bf16.KEY else "#999" for k in keys])
            for y, v in enumerate(values):
                ax.text(v, y, f" {v:.1f}", va="center")
            ax.set_title(f"{data['model']} (batch {data['batch']})")
            ax.set_xlabel("median latency, ms (lower is better)")
        elif kind == "scaling":
            for count in sorted({r["threads"] for r in data}):
                points = [r for r in data if r["threads"] == count]
                ax.plot([r["batch"] for r in points],
                        [min(v for k, v in r["median_ms"].items() if k != "lego_tvm")
                         / r["median_ms"]["lego_tvm"] for r in points],
                        marker="o", label=f"{count} thread(s)")
            ax.set_xscale("log", base=2)
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_xlabel("batch size")
            ax.set_ylabel("lego-tvm speed-up vs fastest fp32 other")
            ax.set_title(f"{data[0]['model']}: scaling")
            ax.legend(fontsize=8)
        elif kind == "stages":
            plot_stages(ax, data)
        elif kind == "targets":
            plot_targets(ax, data)
        else:
            names = [r["layer"] for r in data]
            bars = [("the fastest fp32 dense conv", lambda r: fastest(r["median_ms"], DENSE),
                     ours_ms),
                    (labels["torch_lego_best"], lambda r: "torch_lego_best", ours_ms)]
            if all(bf16.KEY in r["median_ms"] and bf16.OPENVINO_BF16 in r["median_ms"]
                   for r in data):
                bars.append(("OpenVINO bf16 (lego-tvm bf16)", lambda r: bf16.OPENVINO_BF16,
                             lambda r: r["median_ms"][bf16.KEY]))
            height = 0.8 / len(bars)
            for number, (label, key_of, ours_of) in enumerate(bars):
                ax.barh(np.arange(len(data)) + (number - (len(bars) - 1) / 2) * height,
                        [r["median_ms"][key_of(r)] / ours_of(r) for r in data],
                        height=height, label=f"vs {label}")
            ax.axvline(1.0, color="black", linewidth=0.8)
            ax.set_yticks(np.arange(len(data)), names)
            ax.set_xlabel("lego-tvm speed-up (higher is better)")
            ax.set_title("single 3x3 Lego layers, o=2, ratio 0.5")
            ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{info['cpu']}, {info['tvm_threads']} threads, {info['date']}")
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=100)
    plt.close(fig)
    return paths
