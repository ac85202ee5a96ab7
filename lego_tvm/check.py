"""The check of a compiled model against PyTorch on given inputs (``lego-tvm compile``, the
benchmarks and the tests all use it)."""
from __future__ import annotations

import torch

from .support.accuracy import max_relative_error


def error_against_torch(compiled, run_torch, inputs) -> float:
    """max |error| / max |output| of ``compiled`` against ``run_torch`` (a module or any
    PyTorch callable) on ``inputs`` (torch tensors)."""
    with torch.no_grad():
        reference = run_torch(*inputs).numpy()
    out = compiled(*[t.numpy() for t in inputs])
    if out.shape != reference.shape:
        raise ValueError(f"output shape {out.shape} differs from PyTorch's {reference.shape}")
    return max_relative_error(out, reference)
