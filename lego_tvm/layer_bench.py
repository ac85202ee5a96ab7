"""Per-layer speed: one Lego conv (o=2, ratio 0.5, 3x3, batch 1) against its competitors.

Rows are the 3x3 layers at ImageNet sizes and the stride-2 3x3 layers of ``lego_resnet50``.
Each competitor's GFLOP/s counts the multiply-adds its own formulation performs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .bench import max_relative_error, time_side_by_side


@dataclass(frozen=True)
class LayerCase:
    channels: int
    size: int           # input height = width
    stride: int

    @property
    def name(self) -> str:
        return f"{self.channels}ch {self.size}x{self.size} s{self.stride}"


LAYERS = [LayerCase(128, 56, 1), LayerCase(256, 28, 1), LayerCase(512, 14, 1),
          LayerCase(128, 56, 2), LayerCase(256, 28, 2), LayerCase(512, 14, 2)]
LAYER_COMPETITORS = ("torch_lego", "torch_dense", "torch_lego_best", "torch_compile_dense",
                     "tvm_no_pass", "lego_tvm", "lego_tvm_onednn", "lego_tvm_once")
LAYER_LABELS = {"torch_lego": "PyTorch, authors' formulation",
                "torch_dense": "PyTorch, dense-folded (oneDNN)",
                "torch_lego_best": "PyTorch, batch-folded Lego",
                "torch_compile_dense": "torch.compile, dense-folded",
                "tvm_no_pass": "TVM without the Lego pass",
                "lego_tvm": "lego-tvm",
                "lego_tvm_onednn": "lego-tvm, maps on oneDNN",
                "lego_tvm_once": "lego-tvm compute-once stage alone"}


def _macs(case: LayerCase) -> dict[str, int]:
    c = n = case.channels
    m, o, k = n // 2, 2, 9
    pixels = ((case.size - 1) // case.stride + 1) ** 2
    dense = n * c * k * pixels
    once = m * c * k * pixels
    return {"torch_lego": once + n * o * m * pixels, "tvm_no_pass": once + n * o * m * pixels,
            "torch_dense": dense, "torch_compile_dense": dense,
            "torch_lego_best": once + n * o * pixels, "lego_tvm": once + n * o * pixels,
            "lego_tvm_onednn": once + n * o * pixels,
            "lego_tvm_once": once}


def bench_layer(case: LayerCase, repeat: int, warmup: int, use_torch_compile: bool,
                progress: Callable[[str], None]) -> dict:
    from .compiler import compile as lego_compile
    from .lego_conv import BatchFoldedLegoConv2d, LegoConv2d
    from .onednn import why_unavailable
    from .zoo import fold_lego_to_dense

    torch.manual_seed(0)
    layer = LegoConv2d(case.channels, case.channels, 3, 2, 0.5, stride=case.stride).eval()
    x = torch.randn(1, case.channels, case.size, case.size)
    dense = fold_lego_to_dense(torch.nn.Sequential(layer)).eval()
    progress(f"[{case.name}] compiling")
    fused = lego_compile(layer, (x,))
    plain = lego_compile(layer, (x,), fuse_lego=False)
    xn = x.numpy()
    best = BatchFoldedLegoConv2d(layer).eval()
    # The compute-once stage alone, to see how near the peak it runs: the splits folded into
    # the batch and one conv with the bank, on the same fused kernel (a one-split layer,
    # whose gather is an identity copy of the maps).
    once_conv = torch.nn.Conv2d(best.split_channels, best.lego_filters, 3, case.stride, 1,
                                bias=False).eval()
    once_conv.weight.data.copy_(best.bank)
    x_once = x.reshape(best.splits, best.split_channels, case.size, case.size)   # batch 1
    once = lego_compile(once_conv, (x_once,))
    x_once_n = x_once.numpy()
    runs = {"torch_lego": lambda: layer(x), "torch_dense": lambda: dense(x),
            "torch_lego_best": lambda: best(x), "tvm_no_pass": lambda: plain(xn),
            "lego_tvm": lambda: fused(xn), "lego_tvm_once": lambda: once(x_once_n)}
    if why_unavailable() is None:
        on_onednn = lego_compile(layer, (x,), compute_once="onednn")
        runs["lego_tvm_onednn"] = lambda: on_onednn(xn)
    with torch.no_grad():
        reference = layer(x).numpy()
    error = max(max_relative_error(runs[k](), reference)
                for k in ("lego_tvm", "lego_tvm_onednn") if k in runs)
    times = time_side_by_side(case.name, runs, LAYER_COMPETITORS, LAYER_LABELS, dense, x,
                              use_torch_compile, repeat, warmup, progress)
    macs = _macs(case)
    return {"layer": case.name, "channels": case.channels, "size": case.size,
            "stride": case.stride, "median_ms": times, "max_rel_error": error,
            "gflops": {k: 2 * macs[k] / t / 1e6 for k, t in times.items()}}


def format_layer_table(results: list[dict], peak: float | None) -> str:
    keys = [k for k in LAYER_COMPETITORS if any(k in r["median_ms"] for r in results)]
    head = "| layer | " + " | ".join(LAYER_LABELS[k] for k in keys) + \
        " | lego-tvm vs dense | vs batch-folded Lego |"
    lines = [head, "|---|" + "---:|" * (len(keys) + 2)]
    for r in results:
        t, g = r["median_ms"], r["gflops"]
        cells = []
        for k in keys:
            if k not in t:
                cells.append("-")
                continue
            share = f", {100 * g[k] / peak:.0f}%" if peak else ""
            cells.append(f"{t[k]:.2f} ms ({g[k]:.0f} GF/s{share})")
        lines.append(f"| {r['layer']} | " + " | ".join(cells) +
                     f" | {t['torch_dense'] / t['lego_tvm']:.2f}x"
                     f" | {t['torch_lego_best'] / t['lego_tvm']:.2f}x |")
    return "\n".join(lines)
