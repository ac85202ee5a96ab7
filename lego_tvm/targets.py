"""Compilation targets: the host CPU, named presets, or any TVM target dict."""
from __future__ import annotations

import os

import tvm
from tvm.target import Target

# Presets accepted wherever a target is: compile(target="x86-avx2"), --target x86-avx2.
PRESETS: dict[str, dict] = {
    "x86-avx2": {"kind": "llvm", "mcpu": "haswell"},
    "x86-avx512": {"kind": "llvm", "mcpu": "skylake-avx512"},
    "x86-znver3": {"kind": "llvm", "mcpu": "znver3"},
}
SUPPORTED_KINDS = ("llvm",)


class TargetError(ValueError):
    """A target lego-tvm cannot compile for, with the reason."""


def host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def host_target() -> Target:
    """The CPU this process runs on. ``mcpu: native`` silently falls back to a generic CPU
    in TVM 0.27, so the CPU is read from the device instead."""
    host = Target.from_device(tvm.cpu())
    config = dict(host.export())
    config["num-cores"] = host_cores()
    return Target(_clean(config))


def _clean(config: dict) -> dict:
    # export() includes keys Target() rejects when given back (e.g. computed feature maps).
    return {k: v for k, v in config.items() if k not in ("feature", "features")}


def resolve_target(target=None) -> Target:
    """``None`` (the host CPU), a preset name, a TVM target dict, or a ``tvm.target.Target``."""
    if target is None or target == "host":
        resolved = host_target()
    elif isinstance(target, Target):
        resolved = target
    elif isinstance(target, str):
        if target not in PRESETS:
            raise TargetError(f"unknown target preset {target!r}; presets: "
                              f"{', '.join(['host'] + sorted(PRESETS))}, or pass a TVM target dict "
                              "such as {'kind': 'llvm', 'mcpu': 'znver3'}")
        resolved = Target({**PRESETS[target], "num-cores": host_cores()})
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
    return resolved
