"""Where a whole model's time goes: every kernel of the compiled model timed alone (as the
model schedules it, on random data), times the number of calls, with each fused conv
kernel's share of the FMA peak counted on the multiply-adds it performs.

The sum of the kernels alone against the model's own time shows what running them in a
model costs (caches shared between kernels, the VM's calls).
"""
from __future__ import annotations

import collections
from typing import Callable

import numpy as np

from ..support.timing import ROUNDS


def profile_kernels(name: str, target, progress: Callable[[str], None] = print,
                    precision: str = "fp32") -> list[dict]:
    """One row per kernel of zoo model ``name`` compiled for ``target`` (default schedules)
    in ``precision``: calls, milliseconds per call, multiply-adds per call (fused conv
    kernels), shape."""
    import tvm
    from tvm import relax, tirx
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from ..backend import pipeline
    from ..backend.kernel_timing import kernel_arguments
    from ..nn.zoo import get_model
    from ..op.fused_op import spec_of

    model, example = get_model(name)
    progress(f"[kernels {name}] compiling")
    mod, _ = pipeline.import_and_fuse(model, (example,), target)
    if precision == "bf16":
        from ..backend.precision import to_bf16, with_host_bf16

        target = with_host_bf16(target)
        mod = to_bf16(mod, target)[0]
    mod, _, _ = pipeline.schedule(pipeline.lower(mod, target), target)
    calls = collections.Counter()
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def count(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            calls[expr.args[0].name_hint] += 1
    relax.analysis.post_order_visit(mod["main"], count)
    rng, rows = np.random.default_rng(0), []
    kernels = [(gv.name_hint, f) for gv, f in mod.functions_items()
               if isinstance(f, tirx.PrimFunc) and gv.name_hint in calls]
    progress(f"[kernels {name}] timing {len(kernels)} kernels alone")
    for kernel, func in kernels:
        built = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                            target=target).mod
        spec = spec_of(func)
        if spec is not None:
            arrays = kernel_arguments(spec, rng)
        else:
            arrays = [rng.standard_normal([int(d) for d in info.shape]).astype(str(info.dtype))
                      for info in ArgInfo.from_prim_func(func)]
        timer = built.time_evaluator("main", tvm.cpu(), number=10, repeat=ROUNDS * 3)
        ms = float(np.median(timer(*[tvm.runtime.tensor(a) for a in arrays]).results)) * 1e3
        rows.append({"kernel": kernel, "calls": calls[kernel], "ms": ms,
                     "macs": spec.lego_macs if spec else 0, "shape": _shape(spec)})
    return sorted(rows, key=lambda r: -r["calls"] * r["ms"])


def _shape(spec) -> str:
    if spec is None:
        return ""
    s = spec
    kind = f"o={s.splits} m={s.lego_filters}" if s.splits > 1 else "dense"
    return (f"{s.in_channels}->{s.out_channels} {s.kernel[0]}x{s.kernel[1]} s{s.stride[0]} "
            f"{s.height}x{s.width} {kind}{' bf16' if s.bf16 else ''}")


def format_kernel_table(name: str, rows: list[dict], peak: float | None,
                        model_ms: float | None = None) -> str:
    total = sum(r["calls"] * r["ms"] for r in rows)
    head = (f"{name}: kernels alone sum to {total:.2f} ms"
            + (f"; the model runs in {model_ms:.2f} ms" if model_ms else ""))
    lines = [head, "", "| kernel | layer | calls | ms per call | total ms | share | % of FMA peak |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = (f"{100 * 2 * r['macs'] / (r['ms'] * 1e6) / peak:.0f}%"
                 if r["macs"] and peak else "-")
        lines.append(f"| {r['kernel']} | {r['shape'] or '-'} | {r['calls']} | {r['ms']:.3f} | "
                     f"{r['calls'] * r['ms']:.2f} | {100 * r['calls'] * r['ms'] / total:.1f}% | "
                     f"{share} |")
    return "\n".join(lines)
