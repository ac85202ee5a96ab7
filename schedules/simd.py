"""Which vector unit a target has."""
from __future__ import annotations

from tvm.target import Target

from .arm import NEON
from .vector_unit import SimdProfile
from .x86 import x86_profile


def simd_profile(target: Target) -> SimdProfile:
    if str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return NEON
    return x86_profile(target)
