"""Where a fused Lego layer's time goes: padding, compute-once, gather-sum, and threads.

Each stage is isolated by timing the layer's fused kernel (the hand-written default
schedule, the layer table's shapes) next to variants that drop one stage, side by side:

- ``full``: the kernel as the model runs it;
- ``no_pad``: the input passed already padded (padding 0, 2 more rows and columns): the
  same compute-once and gather-sum, no padding stage;
- ``few_outputs``: 8 output channels instead of n, the same Lego maps: the gather-sum
  shrinks by n/8;
- ``one_thread``: the full kernel on one thread.

padding = full - no_pad; gather-sum = (full - few_outputs) * n / (n - 8); compute-once =
full - padding - gather-sum, with its GFLOP/s against the measured FMA peak (a bf16 kernel's,
``precision="bf16"``, against the measured peak of what computes its maps: AMX's
``tdpbf16ps`` or ``vdpbf16ps``; its padding stage also rounds the input to bf16, and without
padding that rounding counts as compute-once). Parallel
efficiency = one_thread / (threads * full): below 1 when the tasks do not divide evenly
between the cores or they wait on memory together.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from ..support.targets import target_arch
from .estimate import LABEL, assembly, core_of, estimate_kernel
from .layers import LayerCase

FEW_OUTPUTS = 8


def layer_spec(case: LayerCase, lanes: int):
    """The fused kernel of ``case`` as lego-tvm builds it (o=2, ratio 0.5, 3x3, batch 1)."""
    from ..op.fused_op import LegoConvSpec
    from ..support.tiling import largest_divisor_at_most

    c = case.channels
    m = c // 2
    return LegoConvSpec(batch=1, in_channels=c, height=case.size, width=case.size,
                        out_channels=c, splits=2, lego_filters=m, split_channels=c // 2,
                        kernel=(3, 3), stride=(case.stride, case.stride), padding=(1, 1, 1, 1),
                        bank_block=largest_divisor_at_most(m, lanes))


def _variant_specs(spec) -> dict:
    return {"full": spec, "one_thread": spec,
            "no_pad": replace(spec, height=spec.height + 2, width=spec.width + 2,
                              padding=(0, 0, 0, 0)),
            "few_outputs": replace(spec, out_channels=FEW_OUTPUTS)}


def profile_layer(case: LayerCase, target, threads: int, rounds: int = 15,
                  progress: Callable[[str], None] = print, llvm_mca: str | None = None,
                  precision: str = "fp32") -> dict:
    """Stage times (ms, medians over ``rounds`` rounds that time every variant once) of
    ``case`` on ``threads`` threads. With ``llvm_mca`` (``estimate.find_llvm_mca()``), also
    the static estimate of the kernel's hot loop: the calibration of the estimate, measured
    and estimated side by side."""
    import tvm

    from ..backend.kernel_timing import build_alone, kernel_arguments
    from ..op.fused_op import lego_conv2d_prim_func
    from ..schedules.lego_cpu import default_config
    from ..schedules.simd import simd_profile
    from ..support.threads import set_threads
    from ..support.tiling import num_cores

    spec = layer_spec(case, simd_profile(target).lanes)
    if precision == "bf16":
        from ..backend.precision import with_host_bf16
        from ..schedules.x86_bf16 import LANES

        spec, target = replace(spec, bf16=True, bank_block=LANES), with_host_bf16(target)
    config = default_config(spec, num_cores(target), simd_profile(target))
    progress(f"[stages {case.name}] building the {precision} kernel and its variants")
    rng = np.random.default_rng(0)
    timers, estimated = {}, None
    for name, variant in _variant_specs(spec).items():
        if name == "one_thread":     # the full kernel again, on one thread
            timers[name] = timers["full"]
            continue
        module, _ = build_alone(lego_conv2d_prim_func(variant), target)
        if name == "full" and llvm_mca:
            estimated = estimate_kernel(llvm_mca, assembly(module), "main", target_arch(target),
                                        core_of(target).mca_cpu)
        arguments = [tvm.runtime.tensor(a) for a in kernel_arguments(variant, rng)]
        timers[name] = (module.time_evaluator("main", tvm.cpu(), number=3, repeat=1), arguments)
    progress(f"[stages {case.name}] timing {len(timers)} variants x {rounds} rounds")
    times = {name: [] for name in timers}
    try:
        for _ in range(rounds):
            for name, (timer, args) in timers.items():
                set_threads(1 if name == "one_thread" else threads)
                times[name].append(timer(*args).mean * 1e3)
    finally:
        set_threads(threads)
    ms = {name: float(np.median(t)) for name, t in times.items()}
    pad = max(0.0, ms["full"] - ms["no_pad"])
    gather = max(0.0, (ms["full"] - ms["few_outputs"]) * spec.out_channels
                 / (spec.out_channels - FEW_OUTPUTS))
    once = ms["full"] - pad - gather
    out_pixels = spec.out_height * spec.out_width
    once_flops = 2 * spec.splits * spec.lego_filters * spec.split_channels * 9 * out_pixels
    unit = "AMX" if getattr(config, "amx", False) else (
        "AVX512_BF16" if precision == "bf16" else "FMA")
    return {"layer": case.name, "precision": precision, "unit": unit, "threads": threads,
            "median_ms": ms,
            "stages_ms": {"padding": pad, "compute_once": once, "gather_sum": gather},
            "compute_once_gflops": once_flops / once / 1e6 if once > 0 else None,
            "parallel_efficiency": ms["one_thread"] / (threads * ms["full"]),
            **({"compute_once_estimated": estimated.as_dict()} if estimated else {}),
            "schedule": {"tile_rows": config.tile_rows, "tasks": (
                spec.out_height // config.tile_rows if config.fuse_stages else None),
                "register_tile": f"{config.reg_filters} blocks x {config.reg_rows}x"
                                 f"{config.reg_cols} pixels",
                "fuse_stages": config.fuse_stages,
                **({"amx_pixels": config.reg_cols} if unit == "AMX" else {})}}


def format_stage_table(results: list[dict], peak: float | None,
                       bf16_peak: float | None = None, amx_peak: float | None = None) -> str:
    """The stage table; a bf16 kernel's compute-once share is of ``amx_peak`` on AMX, of
    ``bf16_peak`` (``vdpbf16ps``) otherwise."""
    estimated = any("compute_once_estimated" in r for r in results)
    lines = ["| layer | kernel | padding | compute-once | gather-sum | compute-once GFLOP/s "
             "| % of peak | " + (f"% of peak, {LABEL} | " if estimated else "")
             + "1 thread | parallel efficiency | schedule |",
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if estimated else "")
             + "---:|---:|---|"]
    for r in results:
        ms, st, sched = r["median_ms"], r["stages_ms"], r["schedule"]
        gflops = r["compute_once_gflops"]
        bf16 = r.get("precision") == "bf16"
        unit = r.get("unit", "FMA")
        of = {"AMX": amx_peak, "AVX512_BF16": bf16_peak}.get(unit, peak)
        share = (f"{100 * gflops / of:.0f}%{f' of {unit}' if bf16 else ''}" if gflops and of
                 else "-")
        if estimated:
            loop = r.get("compute_once_estimated")
            share += (f" | {loop['efficiency']:.0%} ({loop['spills']} spills)" if loop
                      else " | -")
        lines.append(
            f"| {r['layer']}{f' (bf16, {unit})' if bf16 else ''} | {ms['full']:.2f} ms | {st['padding']:.2f} | "
            f"{st['compute_once']:.2f} | {st['gather_sum']:.2f} | "
            f"{f'{gflops:.1f}' if gflops else '-'} | {share} | {ms['one_thread']:.2f} ms | "
            f"{r['parallel_efficiency']:.2f} | {sched['tasks'] or 'stage by stage'} tasks of "
            f"{sched['tile_rows']} rows, "
            + (f"AMX tiles of {sched['amx_pixels']} pixels |" if sched.get("amx_pixels") else
               f"register tile {sched['register_tile']} |"))
    return "\n".join(lines)


def plot_stages(ax, results: list[dict]) -> None:
    """Stacked bars: each layer's kernel time split into its stages."""
    names = [r["layer"] + (" bf16" if r.get("precision") == "bf16" else "") for r in results]
    left = np.zeros(len(results))
    for stage, color in (("compute_once", "#d62728"), ("gather_sum", "#1f77b4"),
                         ("padding", "#999")):
        values = np.array([r["stages_ms"][stage] for r in results])
        ax.barh(names, values, left=left, color=color, label=stage.replace("_", "-"))
        left += values
    ax.set_xlabel("ms, default schedule (stages by difference)")
    ax.set_title("where a fused layer's time goes")
    ax.legend(fontsize=8)
