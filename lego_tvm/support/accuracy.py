"""The one numeric check of a compiled model against PyTorch (or any reference)."""
from __future__ import annotations

import numpy as np

# A tight fp32 bound on max |error| / max |reference|.
TOLERANCE = 1e-4
# bf16 (precision="bf16"): inputs, weights and Lego maps rounded to 8 significant bits, sums
# in fp32. The bound of the CLI and benches, near what OpenVINO's bf16 gives on the same
# dense-folded zoo models (2.3e-2 and 2.6e-2 measured, docs/bf16.md).
BF16_TOLERANCE = 3e-2


def max_relative_error(out, reference) -> float:
    """max |out - reference| / max |reference|: the check every comparison reports."""
    out, reference = np.asarray(out), np.asarray(reference)
    scale = np.abs(reference).max()
    if scale == 0:
        raise ValueError("the reference output is all zeros: a relative error would prove nothing")
    return float(np.abs(out - reference).max() / scale)


def tolerance(precision: str = "fp32") -> float:
    """The bound on max |error| / max |reference| for a model compiled in ``precision``."""
    return BF16_TOLERANCE if precision == "bf16" else TOLERANCE


def verdict(error: float, precision: str = "fp32") -> str:
    """``ok`` or ``MISMATCH``, as the CLI and the benchmarks print it."""
    return "ok" if error <= tolerance(precision) else "MISMATCH"
