"""Per-layer speed: one Lego conv (o=2, ratio 0.5, 3x3, batch 1) against its competitors.

Rows are the 3x3 layers at ImageNet sizes and the stride-2 3x3 layers of ``lego_resnet50``.
Each competitor's GFLOP/s counts the multiply-adds its own formulation performs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..support.accuracy import max_relative_error
from ..support.threads import threads_in_use
from . import bf16
from .models import fastest, time_cell, time_side_by_side
from .runtimes import RUNTIME_LABELS, error_fields, runtime_runs


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
                     "onnxruntime", "openvino", "openvino_default", bf16.KEY, "tvm_no_pass",
                     "lego_tvm",
                     "lego_tvm_tuned", "lego_tvm_onednn", "lego_tvm_auto", "lego_tvm_once")
# lego-tvm's ways to run a layer (compile options); its time is the fastest of them.
OURS = ("lego_tvm", "lego_tvm_tuned", "lego_tvm_onednn", "lego_tvm_auto")
# The dense conv as users would run it: the bar each layer is measured against.
DENSE = ("torch_dense", "torch_compile_dense", "onnxruntime", "openvino")
LAYER_LABELS = {"torch_lego": "PyTorch, authors' formulation",
                "torch_dense": "PyTorch, dense-folded (oneDNN)",
                "torch_lego_best": "PyTorch, batch-folded Lego",
                "torch_compile_dense": "torch.compile, dense-folded",
                **RUNTIME_LABELS,
                bf16.KEY: bf16.LABEL,
                "tvm_no_pass": "TVM without the Lego pass",
                "lego_tvm": "lego-tvm, default schedule",
                "lego_tvm_tuned": "lego-tvm, tuned",
                "lego_tvm_onednn": "lego-tvm, maps on oneDNN",
                "lego_tvm_auto": "lego-tvm, fastest maps (auto: direct, Winograd, oneDNN)",
                "lego_tvm_once": "lego-tvm compute-once stage alone"}


def _macs(case: LayerCase) -> dict[str, int]:
    c = n = case.channels
    m, o, k = n // 2, 2, 9
    pixels = ((case.size - 1) // case.stride + 1) ** 2
    dense = n * c * k * pixels
    once = m * c * k * pixels
    return {"torch_lego": once + n * o * m * pixels, "tvm_no_pass": once + n * o * m * pixels,
            "torch_dense": dense, "torch_compile_dense": dense, "onnxruntime": dense,
            "openvino": dense, "openvino_default": dense,
            "torch_lego_best": once + n * o * pixels, "lego_tvm": once + n * o * pixels,
            "lego_tvm_onednn": once + n * o * pixels, "lego_tvm_tuned": once + n * o * pixels,
            # Counted on the direct conv's multiply-adds, whatever computes the maps.
            "lego_tvm_auto": once + n * o * pixels, bf16.KEY: once + n * o * pixels,
            "lego_tvm_once": once}


@dataclass
class LayerModules:
    """One case's PyTorch modules and inputs: the Lego layer and its compute-once stage
    alone (the splits folded into the batch and one conv with the bank, which lego-tvm runs
    as a one-split layer on the same fused kernel, its gather an identity copy)."""
    layer: torch.nn.Module
    x: torch.Tensor
    once: torch.nn.Module
    x_once: torch.Tensor


def layer_modules(case: LayerCase) -> LayerModules:
    from ..nn.lego_conv import BatchFoldedLegoConv2d, LegoConv2d

    torch.manual_seed(0)
    layer = LegoConv2d(case.channels, case.channels, 3, 2, 0.5, stride=case.stride).eval()
    x = torch.randn(1, case.channels, case.size, case.size)
    folded = BatchFoldedLegoConv2d(layer)
    once = torch.nn.Conv2d(folded.split_channels, folded.lego_filters, 3, case.stride, 1,
                           bias=False).eval()
    once.weight.data.copy_(folded.bank)
    x_once = x.reshape(folded.splits, folded.split_channels, case.size, case.size)  # batch 1
    return LayerModules(layer, x, once, x_once)


class BenchLayers(torch.nn.Module):
    """Every case's layer and compute-once stage in one module (one input each), so that
    ``lego-tvm tune bench_layers`` tunes exactly the kernels the layer benchmark runs."""

    def __init__(self):
        super().__init__()
        parts = [layer_modules(case) for case in LAYERS]
        self.parts = torch.nn.ModuleList(m for p in parts for m in (p.layer, p.once))
        self.example = tuple(t for p in parts for t in (p.x, p.x_once))

    def forward(self, *xs):
        return tuple(module(x) for module, x in zip(self.parts, xs))


def bench_layer(case: LayerCase, repeat: int, warmup: int, use_torch_compile: bool,
                progress: Callable[[str], None]) -> dict:
    from ..compiler import compile as lego_compile
    from ..nn.lego_conv import BatchFoldedLegoConv2d
    from ..backend.onednn import why_unavailable
    from ..nn.fold import fold_lego_to_dense

    parts = layer_modules(case)
    layer, x = parts.layer, parts.x
    dense = fold_lego_to_dense(torch.nn.Sequential(layer)).eval()
    progress(f"[{case.name}] compiling")
    fused = lego_compile(layer, (x,), tuning_logs=None)
    tuned = lego_compile(layer, (x,))             # the shipped logs, when one matches
    plain = lego_compile(layer, (x,), fuse_lego=False)
    xn = x.numpy()
    best = BatchFoldedLegoConv2d(layer).eval()
    once = lego_compile(parts.once, (parts.x_once,))
    x_once_n = parts.x_once.numpy()
    runs = {"torch_lego": lambda: layer(x), "torch_dense": lambda: dense(x),
            "torch_lego_best": lambda: best(x), "tvm_no_pass": lambda: plain(xn),
            "lego_tvm": lambda: fused(xn), "lego_tvm_once": lambda: once(x_once_n)}
    if tuned.report.tuned_kernels:
        runs["lego_tvm_tuned"] = lambda: tuned(xn)
    if why_unavailable() is None:
        on_onednn = lego_compile(layer, (x,), compute_once="onednn")
        runs["lego_tvm_onednn"] = lambda: on_onednn(xn)
    progress(f"[{case.name}] compiling with compute_once='auto' (each way timed)")
    auto = lego_compile(layer, (x,), compute_once="auto")
    runs["lego_tvm_auto"] = lambda: auto(xn)
    with torch.no_grad():
        reference = layer(x).numpy()
    error = max(max_relative_error(runs[k](), reference) for k in OURS if k in runs)
    runtime_timed, runtime_errors = runtime_runs(dense, x, reference, threads_in_use(),
                                                 progress, case.name)
    runs.update(runtime_timed)
    bf16_fields = {}
    bf16.add_bf16(runs, runtime_errors, bf16_fields,
                  bf16.bf16_competitor(layer, x, reference, None, progress, case.name))
    times = time_side_by_side(case.name, runs, LAYER_COMPETITORS, LAYER_LABELS, dense, x,
                              use_torch_compile, repeat, warmup, progress)
    macs = _macs(case)
    return {"layer": case.name, "channels": case.channels, "size": case.size,
            "stride": case.stride, "median_ms": times, "max_rel_error": error,
            "compute_once": [c.as_dict() for c in auto.report.compute_once],
            **error_fields(runtime_errors), **bf16_fields,
            "gflops": {k: 2 * macs[k] / t / 1e6 for k, t in times.items()}}


def ours_ms(result: dict) -> float:
    """lego-tvm's time for a layer: the fastest of its ways (``OURS``) that ran."""
    return min(v for k, v in result["median_ms"].items() if k in OURS)


def format_layer_table(results: list[dict], peak: float | None) -> str:
    keys = [k for k in LAYER_COMPETITORS if any(k in r["median_ms"] for r in results)]
    head = "| layer | " + " | ".join(LAYER_LABELS[k] for k in keys) + \
        " | lego-tvm (fastest way) vs fastest fp32 dense | vs batch-folded Lego |" \
        " bf16: lego-tvm vs OpenVINO default |"
    lines = [head, "|---|" + "---:|" * (len(keys) + 3)]
    for r in results:
        t, g = r["median_ms"], r["gflops"]
        cells = []
        for k in keys:
            if k not in t:
                cells.append("-")
                continue
            share = f", {100 * g[k] / peak:.0f}%" if peak else ""
            cells.append(f"{time_cell(r, k)} ({g[k]:.0f} GF/s{share})")
        bar = fastest(t, DENSE)
        lines.append(f"| {r['layer']} | " + " | ".join(cells) +
                     f" | {t[bar] / ours_ms(r):.2f}x ({LAYER_LABELS[bar]})"
                     f" | {t['torch_lego_best'] / ours_ms(r):.2f}x | {bf16.vs_openvino_bf16(t)} |")
    return "\n".join(lines)
