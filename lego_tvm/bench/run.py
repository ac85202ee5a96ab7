"""Running the benchmarks as ``lego-tvm bench`` and ``lego-tvm demo`` do: the chosen tables
side by side, printed and written as JSON, markdown and PNG."""
from __future__ import annotations

import time
from typing import Callable

from ..support.progress import as_progress
from ..support.targets import host_has_bf16, resolve_target
from ..support.threads import set_threads
from ..support.timing import ROUNDS
from .cross_target import bench_targets, format_target_table
from .estimate import (EstimateUnavailable, bench_estimates, find_llvm_mca,
                       format_estimate_table)
from .kernels import format_kernel_table, profile_kernels
from .layers import LAYERS, bench_layer, format_layer_table
from .models import bench_model, format_model_table, machine
from .output import write_outputs
from .overhead import bench_overhead, format_overhead_table
from .peak import amx_peak_gflops, bf16_peak_gflops, fma_peak_gflops
from .remote import bench_model_remote
from .scaling import THREADS, bench_scaling, format_scaling_table
from .stages import format_stage_table, profile_layer
from .throughput import bench_throughput, format_throughput_table


def run_bench(models: list[str], layers: bool, repeat: int, warmup: int, threads: int,
              out_dir: str, use_torch_compile: bool = True, show_report: bool = False,
              target=None, scaling: tuple[str, list[int]] | None = None,
              stages: bool = False, kernels: bool = False, throughput: bool = False,
              estimate: list[str] | None = None, targets: list[str] | None = None,
              remote=None, progress: Callable[[str], None] = print) -> dict:
    """Run the chosen benchmarks with ``threads`` threads in PyTorch and TVM, print their
    tables and write them (JSON, markdown, PNG) to ``out_dir``; returns the written paths.

    ``estimate``: CPU targets to estimate the models on (``bench/estimate.py``); it also
    runs the stage table, whose compute-once column it calibrates on this machine.
    ``targets``: the cross-target report (``bench/cross_target.py``) for these targets, the
    ones ``remote`` (a board over TVM RPC) can run timed there."""
    set_threads(threads)
    info = machine(threads)
    progress = as_progress(progress)
    mca = None
    if estimate:
        try:
            mca = find_llvm_mca()
        except EstimateUnavailable as why:              # says how to install it; the rest runs
            progress(f"skipping the static estimate: {why}")
            estimate = None
    # The stage table in fp32, and in bf16 where the CPU has it (not what the estimate needs).
    stage_cases = [(case, "fp32") for case in LAYERS] if stages or estimate else []
    if stages and host_has_bf16():
        stage_cases += [(case, "bf16") for case in LAYERS]
    items = (len(models) + len(LAYERS) * layers + bool(scaling) + len(stage_cases)
             + len(models) * throughput + 1 + len(models) * kernels
             + len(models) * bool(estimate) + len(models) * bool(targets))
    with progress.bar(items, "benchmarks", "bench") as bar:
        def each(things, run) -> list:
            done = []
            for thing in things:
                done.append(run(thing))
                bar.update(1)
            return done

        model_results = each(models, lambda m: bench_model(
            m, repeat=repeat, warmup=warmup, progress=progress,
            use_torch_compile=use_torch_compile, target=target,
            show=print if show_report else None))
        layer_results = each(LAYERS if layers else [], lambda case: bench_layer(
            case, repeat, warmup, use_torch_compile, progress))
        scaling_results = each([scaling] if scaling else [], lambda s: bench_scaling(
            s[0], s[1], sorted({1, threads, *THREADS}), repeat, warmup, progress))
        scaling_results = scaling_results[0] if scaling_results else []
        stage_results = each(stage_cases, lambda c: profile_layer(
            c[0], resolve_target(target), threads, progress=progress,
            llvm_mca=mca if c[1] == "fp32" else None, precision=c[1]))
        throughput_results = [row for rows in each(models if throughput else [], lambda m: (
            bench_throughput(m, progress=progress))) for row in rows]
        # Always: a few seconds, and the number a user calling small models cares about.
        overhead = each([None], lambda _: bench_overhead(progress))[0]
        kernel_results = dict(zip(models, each(models if kernels else [], lambda m: (
            profile_kernels(m, resolve_target(target), progress))))) if kernels else {}
        # The machine is shared and its clock varies: the peak is the best of a measurement
        # before and one after the benchmarks.
        peaks = [p for p in (info["fma_peak_gflops"], fma_peak_gflops(threads)) if p]
        peak = info["fma_peak_gflops"] = max(peaks) if peaks else None
        peaks = [p for p in (info["bf16_peak_gflops"], bf16_peak_gflops(threads)) if p]
        bf16_peak = info["bf16_peak_gflops"] = max(peaks) if peaks else None
        peaks = [p for p in (info["amx_peak_gflops"], amx_peak_gflops(threads)) if p]
        amx_peak = info["amx_peak_gflops"] = max(peaks) if peaks else None
        estimate_results = [row for rows in each(models if estimate else [], lambda m: (
            bench_estimates([m], estimate, model_results, peak, progress=progress)))
            for row in rows]
        target_results = [row for rows in each(models if targets else [], lambda m: (
            bench_targets([m], targets, progress, remote))) for row in rows]
    header = (f"machine: {info['cpu']} ({info['target']}); TVM threads {info['tvm_threads']}, "
              f"PyTorch threads {info['torch_threads']}; measured fp32 FMA peak "
              f"{f'{peak:.0f} GFLOP/s' if peak else 'unknown'}"
              + (f", bf16 (vdpbf16ps) peak {bf16_peak:.0f} GFLOP/s" if bf16_peak else "")
              + (f", AMX bf16 (tdpbf16ps) peak {amx_peak:.0f} GFLOP/s" if amx_peak else "")
              + f"; each competitor the best of "
              f"{ROUNDS} alternating blocks, a block the median of {repeat} runs after {warmup} "
              f"warm-up runs; {info['date']}")
    sections = [header]
    if model_results:
        sections.append(format_model_table(model_results, peak))
    if layer_results:
        sections.append(format_layer_table(layer_results, peak))
    if scaling_results:
        sections.append(format_scaling_table(scaling_results))
    if stage_results:
        sections.append(format_stage_table(stage_results, peak, bf16_peak, amx_peak))
    if throughput_results:
        sections.append(format_throughput_table(throughput_results))
    sections.append(format_overhead_table(overhead))
    if estimate_results:
        sections.append(format_estimate_table(estimate_results))
    if target_results:
        sections.append(format_target_table(target_results))
    for m, rows in kernel_results.items():
        model_ms = next((r["median_ms"].get("lego_tvm") for r in model_results
                         if r["model"] == m), None)
        sections.append(format_kernel_table(m, rows, peak, model_ms))
    markdown = "\n\n".join(sections)
    print("\n" + markdown)
    paths = write_outputs(model_results, layer_results, markdown, out_dir, info, scaling_results,
                          stage_results, kernel_results, throughput_results, overhead,
                          estimate_results, target_results)
    return paths


def run_remote_bench(models: list[str], target, remote, tuning_logs, repeat: int, out_dir: str,
                     progress: Callable[[str], None] = print) -> dict:
    """The whole-model benchmark with TVM's competitors on a remote device (RPC); prints the
    table and writes it to ``out_dir``; returns the written paths."""
    results = [bench_model_remote(m, target, remote, tuning_logs, repeat=repeat,
                                  progress=progress) for m in models]
    device = results[0]["device"] if results else {"hardware": str(remote), "emulated": None}
    info = {"cpu": device["hardware"], "target": str(target), "tvm_threads": "remote",
            "emulated": device["emulated"], "remote": str(remote),
            "date": time.strftime("%Y-%m-%d")}
    warning = ("EMULATED: these timings come from an emulator and say nothing about speed on "
               "real hardware" if device["emulated"] else "")
    markdown = "\n\n".join(part for part in (
        f"remote device: {device['hardware']} ({remote}), target {target}; median of "
        f"{repeat} runs; {info['date']}", warning, format_model_table(results)) if part)
    print("\n" + markdown)
    paths = write_outputs(results, [], markdown, out_dir, info)
    return paths
