"""Speed estimates for CPUs that are not here: LLVM's static pipeline model (``llvm-mca``)
of each fused kernel's hot loop. Estimated, never measured: every table, JSON field and plot
carries ``LABEL``.

Per fused kernel: the innermost loop with the most vector FMAs is cut out of the kernel's
assembly and run through ``llvm-mca`` with the core's scheduling model. Its efficiency is the
loop's FMAs per cycle over the core's peak FMAs per cycle, the peak taken from the same model
(a block of independent FMAs), so the two are measured with one ruler. The whole-model range
starts at every fused kernel's compute-once and dense-conv MACs running at its hot loop's
estimated rate on all cores at the nominal clock; what that leaves out is listed in
``LEAVES_OUT``. Without calibration the range has no upper end.

llvm-mca 14 (Debian's default ``llvm``) mis-models these cores (50-80% where 19 says 100%
and 92-99% is measured on Zen), so 19 or newer is required.
"""
from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass

from ..support.targets import resolve_target, target_arch

LABEL = "estimated (static pipeline model)"
LEAVES_OUT = ("cache and memory stalls, the real clock, parallel efficiency, the padding and "
              "gather-sum stages, and every kernel other than the fused convs")
MCA_ITERATIONS = 200


class EstimateUnavailable(RuntimeError):
    """No llvm-mca new enough, or no scheduling model for the target's CPU."""


@dataclass(frozen=True)
class Core:
    mca_cpu: str            # the llvm-mca -mcpu whose scheduling model is used
    clock_ghz: float | None  # nominal clock of a typical part; None: not modelled
    cores: int | None
    note: str


# Target mcpu -> the model used. LLVM 19 models -mcpu=cortex-a72 and cortex-a76 both with its
# Cortex-A57 model: right for the A72 (one 128-bit FMA per cycle), half the A76's FMA rate.
CORES = {
    "cortex-a72": Core("cortex-a72", 1.5, 4, "Raspberry Pi 4 at 1.5 GHz; LLVM's Cortex-A57 "
                       "model, which matches the A72's one 128-bit FMA per cycle"),
    "cortex-a76": Core("neoverse-n1", 2.4, 4, "Raspberry Pi 5 at 2.4 GHz; modelled as the "
                       "Neoverse N1, the server core derived from the A76 (LLVM's own A76 "
                       "entry uses the A57 model, half the A76's FMA rate)"),
    "neoverse-n1": Core("neoverse-n1", 2.5, 16, "AWS Graviton2 at 2.5 GHz, 16 of its cores "
                        "(the preset's count)"),
}


@dataclass
class LoopEstimate:
    kernel: str
    fmas: int                  # vector FMAs per loop iteration
    loads: int                 # memory reads per iteration
    spills: int                # vector stack loads and stores per iteration
    cycles: float              # per iteration, from llvm-mca
    efficiency: float          # of the core's peak FMA rate
    label: str = LABEL

    def as_dict(self) -> dict:
        return asdict(self)


def find_llvm_mca() -> str:
    """The newest ``llvm-mca`` of version 19 or later on this machine."""
    candidates = [shutil.which(f"llvm-mca-{v}") for v in range(30, 18, -1)]
    candidates += sorted(glob.glob("/usr/lib/llvm-*/bin/llvm-mca"), reverse=True)
    candidates.append(shutil.which("llvm-mca"))
    for path in filter(None, candidates):
        if os.path.exists(path) and _major_version(path) >= 19:
            return path
    raise EstimateUnavailable("the static estimate needs llvm-mca 19 or newer (older ones "
                              "mis-model these cores): apt-get install llvm-19")


@functools.cache          # a subprocess per path, once
def _major_version(path: str) -> int:
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    found = re.search(r"LLVM version (\d+)", text)
    return int(found.group(1)) if found else 0


def core_of(target) -> Core:
    """The scheduling model for a TVM CPU target; the host's own mcpu for x86."""
    mcpu = str(target.attrs.get("mcpu", "") or "")
    arch = target_arch(target)
    if arch == "aarch64":
        if mcpu not in CORES:
            raise EstimateUnavailable(
                f"no scheduling model chosen for aarch64 CPU {mcpu or '(generic)'}; give a "
                f"target with one of: {', '.join(CORES)}")
        return CORES[mcpu]
    if not mcpu:
        raise EstimateUnavailable("an x86 target without -mcpu has no scheduling model")
    return Core(mcpu, None, None, f"LLVM's {mcpu} model (this machine)")


# A vector FMA, and its register width, per architecture (AT&T syntax on x86).
_FMA = {"aarch64": r"\bfmla\s+v\d+\.4s", "x86_64": r"\bvfmadd\d+ps\s.*%([yz])mm\d+$"}
_LANES = {"aarch64": 4, "y": 8, "z": 16}
_BRANCH = re.compile(r"^\s+(?:b\.\w+|b|cbn?z|tbn?z|j\w+)\s+(?:.*,\s*)?(\.?[\w.]+)$")
_LABEL = re.compile(r"^(\.?[\w.]+):")


def assembly(runtime_module) -> dict[str, str]:
    """Each function's assembly in a built module (``compiled._executable.mod``, or a
    kernel built alone), by name."""
    (llvm_module,) = runtime_module._collect_dso_modules()
    asm = llvm_module.inspect_source("asm")
    starts = [(m.group(1), m.start()) for m in re.finditer(r"\n([A-Za-z_][\w.]*):\n", asm)]
    ends = [s for _, s in starts[1:]] + [len(asm)]
    return {name: asm[start:end] for (name, start), end in zip(starts, ends)}


def hot_loop(assembly: str, arch: str) -> tuple[list[str], int]:
    """The kernel's hot loop, as instruction lines, and its vector FMA count: of the
    innermost loops with at least a quarter of the most FMAs any has, the densest in FMAs."""
    comment = "//" if arch == "aarch64" else "#"      # on aarch64 "#" starts an immediate
    lines = [line.split(comment)[0].rstrip() for line in assembly.splitlines()]
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := _LABEL.match(line))}
    loops = [(labels[m.group(1)], j) for j, line in enumerate(lines)
             if (m := _BRANCH.match(line)) and labels.get(m.group(1), j) < j]
    innermost = [(i, j) for i, j in loops
                 if not any(i < a and b <= j and (a, b) != (i, j) for a, b in loops)]
    fma = re.compile(_FMA[arch])

    def fmas(loop):
        return sum(bool(fma.search(line)) for line in lines[loop[0]:loop[1] + 1])

    most = max(map(fmas, innermost), default=0)
    if most == 0:
        return [], 0
    # The compute-once register tile: of the loops with a fair share of the FMAs, the one
    # densest in them (a gather-sum loop has more loads than FMAs, and is not it).
    best = max((loop for loop in innermost if 4 * fmas(loop) >= most),
               key=lambda loop: fmas(loop) / (loop[1] - loop[0] + 1))
    body = [line for line in lines[best[0]:best[1] + 1]
            if line.strip() and not line.lstrip().startswith(".") and not _LABEL.match(line)]
    return body, fmas(best)


def mca_cycles(mca: str, body: list[str], arch: str, cpu: str) -> float:
    """Cycles per iteration of ``body`` in llvm-mca's model of ``cpu``."""
    triple = "aarch64-linux-gnu" if arch == "aarch64" else "x86_64-linux-gnu"
    done = subprocess.run([mca, f"-mtriple={triple}", f"-mcpu={cpu}",
                           f"-iterations={MCA_ITERATIONS}"], input="\n".join(body) + "\n",
                          capture_output=True, text=True, timeout=120)
    found = re.search(r"Total Cycles:\s+(\d+)", done.stdout)
    if done.returncode != 0 or not found:
        raise EstimateUnavailable(f"llvm-mca -mcpu={cpu} failed: {done.stderr.strip()[:300]}")
    return int(found.group(1)) / MCA_ITERATIONS


@functools.cache          # one llvm-mca run per core model, not per kernel
def peak_fmas_per_cycle(mca: str, arch: str, cpu: str, width: str = "z") -> float:
    """The model's peak: 24 independent vector FMAs."""
    if arch == "aarch64":
        block = [f"fmla v{i}.4s, v30.4s, v31.4s" for i in range(24)]
    else:
        block = [f"vfmadd231ps %{width}mm30, %{width}mm31, %{width}mm{i}" for i in range(24)]
    return 24 / mca_cycles(mca, block, arch, cpu)


def estimate_kernel(mca: str, functions: dict[str, str], kernel: str, arch: str, cpu: str
                    ) -> LoopEstimate | None:
    """The hot loop of ``kernel`` (its own function or the parallel body TVM outlines from it,
    ``<kernel>_compute_``), estimated on ``cpu``'s model; None if it has no vector FMA loop."""
    code = "\n".join(text for name, text in functions.items()
                     if name == kernel or name.startswith(kernel + "_"))
    body, fmas = hot_loop(code, arch)
    if not body:
        return None
    width = "z"
    if arch == "x86_64":
        widths = re.findall(_FMA["x86_64"], "\n".join(body), re.M)
        width = max(set(widths), key=widths.count) if widths else "z"
    text = "\n".join(body)
    if arch == "aarch64":
        loads = len(re.findall(r"^\s+(?:ldr|ldp|ld1\w*|ldur)\s", text, re.M))
        spills = len(re.findall(r"^\s+(?:ldr|str|ldp|stp|ldur|stur)\s+q\d+.*\[sp", text, re.M))
    else:
        loads = len(re.findall(r"^\s+(?!(?:vmovaps|vmovups)\s+%\w+,)\S+\s+[^,]*\(%", text,
                               re.M))
        spills = len(re.findall(r"%[yz]mm\d+.*\(%rsp\)|\(%rsp\).*%[yz]mm\d+", text))
    cycles = mca_cycles(mca, body, arch, cpu)
    peak = peak_fmas_per_cycle(mca, arch, cpu, width)
    return LoopEstimate(kernel, fmas, loads, spills, round(cycles, 2),
                        round(min(1.0, fmas / cycles / peak), 3))


def estimate(model, example_inputs, target, progress=None, fuse_lego: bool = True) -> dict:
    """Compile ``model`` for the CPU ``target`` and estimate it (``estimate_compiled``).
    ``fuse_lego=False``: the model without the Lego pass, every conv on the fused operator
    as an ordinary conv (how a dense-folded model is compared). ``lego_tvm.estimate`` is
    this function."""
    from ..compiler import compile as lego_compile

    tvm_target = resolve_target(target)
    core = _check_estimable(tvm_target)          # before the compile: a refusal is quick
    if progress:
        progress(f"estimate: compiling for {target} ({core.mca_cpu} model)")
    compiled = lego_compile(model, example_inputs, target=tvm_target, fuse_lego=fuse_lego)
    return estimate_compiled(compiled, tvm_target, str(target or "host"))


def estimate_compiled(compiled, target, name: str) -> dict:
    """The estimate of a model compiled for the CPU ``target`` (see the module docstring):
    per fused kernel (``LoopEstimate``), and the whole model's lower bound at the core's
    nominal clock."""
    core, arch, mca = _check_estimable(target), target_arch(target), find_llvm_mca()
    functions = assembly(compiled._executable.mod)
    report = compiled.report
    kernels, seen = [], {}
    for layer in [*report.layers, *report.dense_convs]:
        if layer.kernel not in seen:
            seen[layer.kernel] = estimate_kernel(mca, functions, layer.kernel, arch,
                                                 core.mca_cpu)
        loop = seen[layer.kernel]
        s = layer.spec
        kernels.append({"layer": layer.name, "kernel": layer.kernel,
                        "conv": f"{s.in_channels}->{s.out_channels} {s.kernel[0]}x{s.kernel[1]} "
                                f"s{s.stride[0]} at {s.height}x{s.width}",
                        "fma_macs": _fma_macs(layer),
                        **(loop.as_dict() if loop else {"label": LABEL, "efficiency": None})})
    lanes = _LANES["aarch64"] if arch == "aarch64" else 16
    result = {"target": name, "core_model": core.mca_cpu, "core_note": core.note,
              "llvm_mca": _version_line(mca), "label": LABEL, "leaves_out": LEAVES_OUT,
              "kernels": kernels}
    estimated = [k for k in kernels if k["efficiency"]]
    if core.clock_ghz and estimated:
        peak = peak_fmas_per_cycle(mca, arch, core.mca_cpu)
        cycles = sum(k["fma_macs"] / lanes / (peak * k["efficiency"]) for k in estimated)
        result["model_ms_low"] = round(cycles / core.cores / (core.clock_ghz * 1e6), 3)
        result["clock_ghz"], result["cores"] = core.clock_ghz, core.cores
    return result


def _check_estimable(target) -> Core:
    """The core model for ``target``; EstimateUnavailable if llvm-mca 19+ is missing or the
    target is not a CPU with a model."""
    find_llvm_mca()
    if target.kind.name != "llvm":
        raise EstimateUnavailable(f"the static estimate is for CPU targets, not "
                                  f"{target.kind.name}")
    return core_of(target)


def _fma_macs(layer) -> int:
    """The MACs a fused kernel's FMA loop does: its compute-once stage (for an ordinary conv
    on the fused operator, each output channel is its own filter: all of its MACs)."""
    s = layer.spec
    return (s.batch or 1) * s.out_height * s.out_width * s.lego_filters * s.splits * \
        s.split_channels * s.kernel[0] * s.kernel[1]


def _version_line(mca: str) -> str:
    return f"llvm-mca {_major_version(mca)} ({mca})"


DEFAULT_TARGETS = ("arm-cortex-a72", "arm-cortex-a76", "arm-neoverse-n1")


def bench_estimates(models: list[str], targets, model_results: list[dict],
                    peak_gflops: float | None, batch: int = 1, progress=print) -> list[dict]:
    """``estimate`` of each zoo model on each target, plus the host's: its static lower bound
    (at the measured FMA peak) against its measured time from ``model_results``, the factor
    that gives each target's range its upper end."""
    from ..nn.zoo import get_model

    rows = []
    for name in models:
        model, x = get_model(name, batch=batch)
        measured = next((r["median_ms"].get("lego_tvm") for r in model_results
                         if r["model"] == name), None)
        host = estimate(model, (x,), None, progress)
        host_low = _low_at_peak(host["kernels"], peak_gflops)
        factor = measured / host_low if measured and host_low else None
        rows.append({"model": name, "target": "host", **host, "measured_ms": measured,
                     "model_ms_low": host_low, "measured_over_low": factor})
        for target in targets:
            found = estimate(model, (x,), target, progress)
            if factor and "model_ms_low" in found:
                found["model_ms_high"] = round(found["model_ms_low"] * factor, 3)
            rows.append({"model": name, **found})
    return rows


def _low_at_peak(kernels: list[dict], peak_gflops: float | None) -> float | None:
    """The fused kernels' FMA MACs at their estimated efficiency of the measured peak, ms."""
    if not peak_gflops or not all(k["efficiency"] for k in kernels):
        return None
    return round(sum(2 * k["fma_macs"] / (peak_gflops * 1e6 * k["efficiency"])
                     for k in kernels), 3)


def format_estimate_table(rows: list[dict]) -> str:
    lines = [f"Static estimate, {LABEL}: each fused kernel's hot loop in llvm-mca's model of "
             "the core. Whole model: from every fused kernel's FMA work at its estimated rate "
             f"on all cores at the nominal clock (leaves out {LEAVES_OUT}) up to that times "
             "the host's measured/static ratio from this run.",
             "",
             "| model | target | core model | fused layers | estimated efficiency, worst "
             "(kernel) / median | kernels with vector spills | whole model, estimated |",
             "|---|---|---|---:|---|---:|---|"]
    for r in rows:
        known = [k for k in r["kernels"] if k["efficiency"]]
        if not known:
            continue
        worst = min(known, key=lambda k: k["efficiency"])
        median = sorted(k["efficiency"] for k in known)[len(known) // 2]
        spilling = len({k["kernel"] for k in known if k["spills"]})
        if r["target"] == "host":
            whole = (f"measured {r['measured_ms']:.2f} ms = {r['measured_over_low']:.1f}x the "
                     f"static {r['model_ms_low']:.2f} ms" if r.get("measured_over_low") else "-")
        elif "model_ms_low" in r:
            high = f" to {r['model_ms_high']:.1f}" if "model_ms_high" in r else " or more"
            whole = (f"{r['model_ms_low']:.1f}{high} ms ({r['cores']} cores at "
                     f"{r['clock_ghz']} GHz)")
        else:
            whole = "-"
        lines.append(f"| {r['model']} | {r['target']} | {r['core_model']} | {len(known)} | "
                     f"{worst['efficiency']:.0%} ({worst['kernel']}) / {median:.0%} | "
                     f"{spilling} | {whole} |")
    return "\n".join(lines)
