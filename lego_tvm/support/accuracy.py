"""The one numeric check of a compiled model against PyTorch (or any reference)."""
from __future__ import annotations

import numpy as np

# A tight fp32 bound on max |error| / max |reference|.
TOLERANCE = 1e-4


def max_relative_error(out, reference) -> float:
    """max |out - reference| / max |reference|: the check every comparison reports."""
    out, reference = np.asarray(out), np.asarray(reference)
    scale = np.abs(reference).max()
    if scale == 0:
        raise ValueError("the reference output is all zeros: a relative error would prove nothing")
    return float(np.abs(out - reference).max() / scale)


def verdict(error: float) -> str:
    """``ok`` or ``MISMATCH``, as the CLI and the benchmarks print it."""
    return "ok" if error <= TOLERANCE else "MISMATCH"
