"""One report across targets (``lego-tvm bench --targets host,arm-cortex-a72,...``):
lego-tvm against the dense-folded model compiled by TVM for the same target, model by model,
and layer by layer where the numbers come from the static estimate.

How each target's numbers are obtained, and said so in every row (``basis``):

- the host: measured (medians, side by side in alternating rounds);
- a CPU that is not this one (ARM): measured on the board when one is given over TVM RPC
  (an emulated board is said to be one, and left out of the plot); else ``estimate.LABEL``,
  both sides put through the same static pipeline model, and per layer lego-tvm's
  compute-once work against the dense conv's;
- CUDA: measured when this machine has a GPU, else compiled for it and unmeasured.
"""
from __future__ import annotations

import os
import tempfile

import tvm

from ..support.progress import as_progress
from ..support.targets import resolve_target, why_not_runnable_here
from ..support.timing import best_of_rounds
from .estimate import LABEL, EstimateUnavailable, estimate, estimate_compiled

MEASURED = "measured"
REMOTE_REPEAT = 10          # runs timed on a board, per model
UNMEASURED = "compiled, unmeasured (no such device here)"


def bench_targets(models: list[str], targets: list[str], progress=print, remote=None
                  ) -> list[dict]:
    """A row per model and target (see the module docstring). ``remote``: a board over TVM
    RPC (``tuning.remote.Remote``) that times the targets of its architecture."""
    from ..nn.fold import fold_lego_to_dense
    from ..nn.zoo import get_model

    progress = as_progress(progress)
    rows = []
    for name in models:
        model, x = get_model(name)
        dense = fold_lego_to_dense(model).eval()
        for target in targets:
            progress(f"[targets {name}] {target}")
            rows.append({"model": name, "target": target,
                         **_compare(model, dense, x, target, progress, remote)})
    return rows


def _compare(model, dense, x, target: str, progress, remote) -> dict:
    from ..compiler import compile as lego_compile

    tvm_target = resolve_target(None if target == "host" else target)
    gpu = tvm_target.kind.name == "cuda"
    if remote is not None and not gpu and why_not_runnable_here(tvm_target):
        return _measure_on_board(model, dense, x, tvm_target, remote, progress)
    if not why_not_runnable_here(tvm_target) and (not gpu or tvm.cuda().exist):
        ours = lego_compile(model, x, target=tvm_target)
        theirs = lego_compile(dense, x, target=tvm_target, fuse_lego=False)
        times = best_of_rounds([lambda: ours(x), lambda: theirs(x)])
        return {"basis": MEASURED, "lego_ms": times[0], "dense_ms": times[1],
                "speedup": times[1] / times[0], "correctness": _checked(ours, model, x)}
    if gpu:
        lego_compile(model, x, target=tvm_target)
        lego_compile(dense, x, target=tvm_target, fuse_lego=False)
        return {"basis": UNMEASURED, "correctness": "compiled; not run here"}
    try:
        theirs = estimate(dense, (x,), tvm_target, progress, fuse_lego=False)
        compiled = lego_compile(model, x, target=tvm_target)   # estimated, and emulated
        ours = estimate_compiled(compiled, tvm_target, target)
    except EstimateUnavailable as why:
        return {"basis": f"not estimated: {why}"}
    row = {"basis": LABEL, "core_model": ours["core_model"],
           "layers": _layer_pairs(ours["kernels"], theirs["kernels"]),
           "correctness": _run_under_emulation(compiled, model, x, tvm_target, progress)}
    if "model_ms_low" in ours and "model_ms_low" in theirs:
        row.update(lego_ms=ours["model_ms_low"], dense_ms=theirs["model_ms_low"],
                   speedup=theirs["model_ms_low"] / ours["model_ms_low"])
    return row


def _measure_on_board(model, dense, x, target, remote, progress) -> dict:
    """Both models timed on the board; a board that is an emulator is said to be one."""
    import torch

    from ..compiler import compile as lego_compile
    from ..support.targets import target_arch
    from ..tuning.remote import describe
    from .remote import time_remotely

    session = remote.connect()
    device = describe(session, target_arch(target))
    progress(f"[targets] timing on {device['hardware']} ({remote})")
    with torch.no_grad():
        reference = model(x).numpy()
    results = [time_remotely(session, lego_compile(m, x, target=target, fuse_lego=fuse), x,
                             reference, REMOTE_REPEAT, f"cross-target-{side}")
               for side, m, fuse in (("lego", model, True), ("dense", dense, False))]
    (lego_ms, lego_error), (dense_ms, _) = results
    basis = (f"EMULATED device ({device['hardware']}): timings say nothing about speed"
             if device["emulated"] else f"measured on {device['hardware']} over RPC")
    return {"basis": basis, "lego_ms": lego_ms, "dense_ms": dense_ms,
            "speedup": dense_ms / lego_ms, "device": device,
            "correctness": f"on the device: max relative error {lego_error:.1e}"}


def _run_under_emulation(compiled, model, x, target, progress) -> str:
    """lego-tvm's build of ``model`` for an aarch64 ``target`` run under the emulator on
    ``x`` and checked against PyTorch: what happened, in words."""
    import numpy as np

    from ..support.targets import ToolchainError, target_arch
    from .emulator import emulator_ready, run_exported

    if target_arch(target) != "aarch64":
        return "-"
    if not emulator_ready():
        return "not run (set the emulator up with bash tools/arm-emulator.sh setup)"
    cpu = str(target.attrs.get("mcpu", "") or "max")
    progress(f"[targets] running the {cpu} build under the emulator")
    with tempfile.TemporaryDirectory() as folder:
        try:
            compiled.export(os.path.join(folder, "model.so"))
        except ToolchainError as why:
            return f"not run: {why}"
        np.savez(os.path.join(folder, "model.in.npz"), arg0=x.numpy())
        run_exported(folder, cpu)
        got = np.load(os.path.join(folder, "model.out.npz"))["arr_0"]
    return f"run under emulation ({cpu}): {_checked(lambda _x: got, model, x)}"


def _checked(run, model, x) -> str:
    """``run``'s output on ``x`` against PyTorch's, in words."""
    from ..check import error_against_torch
    from ..support.accuracy import TOLERANCE

    error = error_against_torch(run, model, (x,))
    verdict = "matches PyTorch" if error <= TOLERANCE else "DIFFERS from PyTorch"
    return f"{verdict}, max relative error {error:.1e}"


def _layer_pairs(lego: list[dict], dense: list[dict]) -> list[dict]:
    """Each Lego layer next to the dense conv that replaced it in the folded model (the next
    one of the same shape), both estimated: FMA MACs over the loop's efficiency."""
    pairs, unused = [], list(dense)
    for ours in (k for k in lego if not k["kernel"].startswith("fused_conv2d")):
        theirs = next((k for k in unused if k["conv"] == ours["conv"]), None)
        if theirs is None or not (ours["efficiency"] and theirs["efficiency"]):
            continue
        unused.remove(theirs)
        cost = {side: k["fma_macs"] / k["efficiency"] for side, k in (("lego", ours),
                                                                        ("dense", theirs))}
        pairs.append({"layer": ours["layer"], "conv": ours["conv"],
                      "lego_efficiency": ours["efficiency"],
                      "dense_efficiency": theirs["efficiency"],
                      "speedup": cost["dense"] / cost["lego"]})
    return pairs


def format_target_table(rows: list[dict]) -> str:
    lines = ["lego-tvm against the dense-folded model compiled by TVM for the same target. "
             f"Host: measured. Other CPUs: {LABEL}, both models through the same model of "
             "the core; lego-tvm's side counts its compute-once work only (the gather-sum is "
             "left out, as the estimate leaves it out everywhere).",
             "",
             "| model | target | basis | lego-tvm | dense-folded, TVM | lego-tvm speed-up | "
             "layers: speed-up min / median / max | correctness on the target |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        cells = ["-", "-", "-"]
        if "speedup" in r:
            unit = "ms, lower bound" if r["basis"] == LABEL else "ms"
            cells = [f"{r['lego_ms']:.2f} {unit}", f"{r['dense_ms']:.2f} {unit}",
                     f"{r['speedup']:.2f}x"]
        layers = sorted(p["speedup"] for p in r.get("layers", []))
        spread = (f"{layers[0]:.2f}x / {layers[len(layers) // 2]:.2f}x / {layers[-1]:.2f}x"
                  if layers else "-")
        lines.append(f"| {r['model']} | {r['target']} | {r['basis']} | " + " | ".join(cells)
                     + f" | {spread} | {r.get('correctness', '-')} |")
    return "\n".join(lines)


def plot_targets(ax, rows: list[dict]) -> None:
    """lego-tvm's speed-up over the dense-folded model per model and target; estimated bars
    hatched and labelled."""
    shown = [r for r in rows if "speedup" in r and not r["basis"].startswith("EMULATED")]
    labels = [f"{r['model']}\n{r['target']}" for r in shown]
    bars = ax.barh(labels, [r["speedup"] for r in shown],
                   color=["#f4a582" if r["basis"] == LABEL else "#d62728" for r in shown])
    for bar, r in zip(bars, shown):
        if r["basis"] == LABEL:
            bar.set_hatch("//")
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f" {r['speedup']:.2f}x" + (" (estimated)" if r["basis"] == LABEL else ""),
                va="center", fontsize=8)
    ax.axvline(1.0, color="#333", lw=0.8)
    ax.set_xlabel("speed-up over the dense-folded model on the same target")
    ax.set_title("across targets (hatched: estimated)")
