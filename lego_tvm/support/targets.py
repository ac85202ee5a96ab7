"""Compilation targets: the host CPU, named presets, or any TVM target dict."""
from __future__ import annotations

import json
import os
import platform
import shutil

import tvm
from tvm.target import Target, codegen

from .threads import usable_cores

_AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}
_CUDA = {"kind": "cuda", "max_shared_memory_per_block": 49152, "max_threads_per_block": 1024,
         "thread_warp_size": 32, "registers_per_block": 65536,
         "host": {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}}
# Presets accepted wherever a target is: compile(target="x86-avx2"), --target x86-avx2.
# x86 presets use this machine's core count; ARM presets the usual core count of such a
# board or phone cluster (give a dict with "num-cores" for another).
PRESETS: dict[str, dict] = {
    "x86-avx2": {"kind": "llvm", "mcpu": "haswell"},
    "x86-avx512": {"kind": "llvm", "mcpu": "skylake-avx512"},
    "x86-znver3": {"kind": "llvm", "mcpu": "znver3"},
    # CPUs with AVX512_BF16, for precision="bf16": AMD Zen 4, Intel Sapphire Rapids.
    "x86-zen4": {"kind": "llvm", "mcpu": "znver4"},
    "x86-sapphirerapids": {"kind": "llvm", "mcpu": "sapphirerapids"},
    # Any ARMv8-A core with NEON: the code runs on all of them.
    "arm-neon": {**_AARCH64, "mattr": ["+neon"], "num-cores": 4},
    # Raspberry Pi 4 (4x Cortex-A72, ARMv8.0-A).
    "arm-cortex-a72": {**_AARCH64, "mcpu": "cortex-a72", "num-cores": 4},
    # Raspberry Pi 5, and the big cores of 2019-2022 phones (Cortex-A76/A78, ARMv8.2-A).
    "arm-cortex-a76": {**_AARCH64, "mcpu": "cortex-a76", "num-cores": 4},
    # Servers: AWS Graviton2, Ampere Altra (Neoverse N1, ARMv8.2-A).
    "arm-neoverse-n1": {**_AARCH64, "mcpu": "neoverse-n1", "num-cores": 16},
    # NVIDIA GPUs; host code for a generic x86-64 CPU, as GPU servers have.
    "cuda-a100": {**_CUDA, "arch": "sm_80"},
    "cuda-l4": {**_CUDA, "arch": "sm_89"},         # also RTX 40xx
    "cuda-h100": {**_CUDA, "arch": "sm_90"},
}
SUPPORTED_KINDS = ("llvm", "cuda")
# Instruction-set extensions whose code faults on a CPU without them, widest first.
VECTOR_FEATURES = {"x86_64": ("avx512f", "avx2", "fma")}
# LLVM's name of AVX512_BF16 (vdpbf16ps), and the flag Linux shows for it in /proc/cpuinfo.
BF16_FEATURE, BF16_CPU_FLAG = "avx512bf16", "avx512_bf16"
# AMX with bf16 tiles (tdpbf16ps): LLVM's names, and Linux's flags.
AMX_FEATURES, AMX_CPU_FLAGS = ("amx-tile", "amx-bf16"), ("amx_tile", "amx_bf16")
# Debian / Ubuntu packages of the cross toolchain for each architecture lego-tvm targets.
CROSS_PACKAGES = {"aarch64": "gcc-aarch64-linux-gnu libc6-dev-arm64-cross"}


class TargetError(ValueError):
    """A target lego-tvm cannot compile for, with the reason."""


class ToolchainError(OSError):
    """The compiler needed to write a library for another CPU is not installed."""


def host_cpu_name() -> str:
    """The CPU's model name as the OS reports it (``unknown`` where it does not)."""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return "unknown"


def host_cpu_flags() -> set[str]:
    """The instruction-set flags the OS reports for this CPU (empty where it reports none)."""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    return set()


def host_has_bf16() -> bool:
    """Whether this CPU has AVX512_BF16, as the OS reports it. LLVM's host detection may not
    say so: in a virtual machine it can see an older CPU model (here: Rocket Lake)."""
    return BF16_CPU_FLAG in host_cpu_flags()


def host_has_amx_bf16() -> bool:
    """Whether this CPU has AMX tiles with bf16, as the OS reports it."""
    return set(AMX_CPU_FLAGS) <= host_cpu_flags()


def host_target() -> Target:
    """The CPU this process runs on. ``mcpu: native`` silently falls back to a generic CPU
    in TVM 0.27, so the CPU is read from the device instead."""
    host = Target.from_device(tvm.cpu())
    config = dict(host.export())
    config["num-cores"] = usable_cores()
    return Target(clean_config(config))


def clean_config(config: dict) -> dict:
    # export() includes keys Target() rejects when given back (e.g. computed feature maps).
    return {k: v for k, v in config.items() if k not in ("feature", "features")}


def resolve_target(target=None) -> Target:
    """``None`` (the host CPU), a preset name, a TVM target tag (``tvm.target.list_tags()``),
    a TVM target dict, or a ``tvm.target.Target``."""
    if target is None or target == "host":
        resolved = host_target()
    elif isinstance(target, Target):
        resolved = target
    elif isinstance(target, str) and target in PRESETS:
        preset = PRESETS[target]
        resolved = Target(preset if preset["kind"] == "cuda" else
                          {"num-cores": usable_cores(), **preset})
    elif isinstance(target, str) and target in tvm.target.list_tags():
        resolved = Target(target)          # a TVM tag, e.g. "nvidia/nvidia-h100"
    elif isinstance(target, str):
        raise TargetError(f"unknown target {target!r}: not a preset ("
                          f"{', '.join(['host'] + sorted(PRESETS))}), nor one of TVM's "
                          f"{len(tvm.target.list_tags())} target tags (tvm.target.list_tags(): "
                          "'nvidia/nvidia-h100', 'raspberry-pi/4b-aarch64', ...); or pass a TVM "
                          "target dict such as {'kind': 'llvm', 'mcpu': 'znver3'}")
    elif isinstance(target, dict):
        try:
            resolved = Target(target)
        except Exception as err:  # noqa: BLE001 - TVM raises several error types here
            raise TargetError(f"TVM rejects the target {target!r}: {err}") from None
    else:
        raise TargetError(f"target must be None, a preset name, a dict or a tvm Target, "
                          f"not {type(target).__name__}")
    if resolved.kind.name not in SUPPORTED_KINDS:
        raise TargetError(f"target kind {resolved.kind.name!r} is not supported yet; "
                          f"supported kinds: {', '.join(SUPPORTED_KINDS)}")
    _check_cpu(resolved)
    return resolved


def _check_cpu(target: Target) -> None:
    """LLVM silently emits generic code for a CPU name it does not know."""
    mcpu = str(target.attrs.get("mcpu", "") or "")
    if target.kind.name != "llvm" or not mcpu:
        return
    triple = str(target.attrs.get("mtriple", "") or "") or codegen.llvm_get_system_triple()
    if not codegen.llvm_is_valid_cpu(mcpu, triple):
        known = sorted(str(c) for c in codegen.llvm_get_cpu_archlist(target))
        raise TargetError(f"LLVM does not know the CPU {mcpu!r} for {triple}; it knows: "
                          f"{', '.join(known)}")


# CPUs whose LLVM scheduling model is wrong for them, and the model of a core with the same
# instruction set that is right. LLVM 19 schedules -mcpu=cortex-a76 with its Cortex-A57 model
# (one 128-bit FMA pipe, where the A76 has two): register-tiled kernels then spill (measured
# with llvm-mca: 28 spills and 83% of peak in a Lego kernel's loop, against 0 and 99.5% when
# scheduled as the Neoverse N1, the server core derived from the A76, with the same ISA).
_SCHEDULING_MODEL = {"cortex-a76": "neoverse-n1"}


def codegen_target(target: Target) -> Target:
    """``target`` as LLVM should compile it: the same instruction set, the scheduling model
    of ``_SCHEDULING_MODEL`` where the CPU's own one is wrong."""
    mcpu = str(target.attrs.get("mcpu", "") or "") if target.kind.name == "llvm" else ""
    if mcpu not in _SCHEDULING_MODEL:
        return target
    config = {k: v for k, v in target.export().items() if k not in ("id", "tag")}
    return Target(clean_config({**config, "mcpu": _SCHEDULING_MODEL[mcpu]}))


def target_arch(target: Target) -> str:
    """``x86_64``, ``aarch64``, ...: the first part of the target triple (host if none);
    for a GPU target, that of its host code."""
    if target.kind.name == "cuda":
        return target_arch(target.host) if target.host is not None else platform.machine()
    triple = str(target.attrs.get("mtriple", "") or "")
    return triple.split("-")[0] if triple else platform.machine()


def parse_target(text: str) -> Target:
    """The ``Target`` written as ``str(target)`` (JSON) in an exported model's description."""
    return Target(clean_config(json.loads(text)))


def why_not_runnable_here(target: Target) -> str | None:
    """Why code built for ``target`` cannot run on this machine (None if it can)."""
    arch, host = target_arch(target), platform.machine()
    if arch != host:
        return f"it is built for {arch} and this machine is {host}"
    if target.kind.name == "cuda":
        return None if tvm.cuda().exist else "it is built for CUDA and this machine has no GPU"
    if (arch == "x86_64" and codegen.target_has_features(BF16_FEATURE, target)
            and not host_has_bf16()):
        return "it is built with bf16 kernels (AVX512_BF16) and this CPU lacks AVX512_BF16"
    if (arch == "x86_64" and all(codegen.target_has_features(f, target) for f in AMX_FEATURES)
            and not host_has_amx_bf16()):
        return "it is built for a CPU with AMX (bf16 tiles) and this CPU lacks AMX"
    here = host_target()
    for feature in VECTOR_FEATURES.get(arch, ()):
        if (codegen.target_has_features(feature, target)
                and not codegen.target_has_features(feature, here)):
            return f"it is built for a CPU with {feature.upper()} and this CPU lacks it"
    return None


def cross_compiler(target: Target) -> str | None:
    """The C compiler that links libraries for ``target``: None for this machine's own
    architecture, else ``<triple>-gcc``, which must be installed (``ToolchainError``)."""
    arch = target_arch(target)
    if arch == platform.machine():
        return None
    cc = f"{arch}-linux-gnu-gcc"
    if shutil.which(cc) is None:
        packages = CROSS_PACKAGES.get(arch, f"a cross toolchain for {arch}")
        raise ToolchainError(f"writing a library for {arch} needs the cross compiler {cc}, which is "
                             f"not installed (on Debian / Ubuntu: apt-get install {packages})")
    return cc
