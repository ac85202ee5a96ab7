"""Timing one fused kernel alone, here and now, side by side with an alternative.

Each kernel runs alone on random data, every way the same way (median of Python calls),
in alternating rounds; each way keeps its best round, so a burst of load elsewhere on a
shared machine does not decide. Used to choose the compute-once backend
(``compute_once.py``) and to check tuned records against the default schedule
(``default_records.py``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import tvm
from tvm import tirx
from tvm.target import Target

from ..op import bf16, winograd
from ..op.fused_op import LegoConvSpec, pack_bank
from ..support.targets import codegen_target


def random_inputs(spec: LegoConvSpec, rng) -> dict[str, np.ndarray]:
    """The fused kernel's arguments in order (bank unpacked ``[m, b, kh, kw]``), batch 1
    when the batch is chosen at call time; bf16 tensors as their bits."""
    s = spec
    batch = s.batch or 1
    out = (batch, *s.output_shape[1:])
    arrays = {
        "x": rng.standard_normal((batch, *s.input_shape[1:]), np.float32),
        "bank": rng.standard_normal((s.lego_filters, s.split_channels, *s.kernel), np.float32),
        "index": rng.integers(0, s.lego_filters, (s.splits, s.out_channels), dtype=np.int32),
        "coef": rng.standard_normal((s.splits, s.out_channels), np.float32),
        "bias": rng.standard_normal((s.out_channels,), np.float32)}
    if s.has_residual:
        arrays["residual"] = rng.standard_normal(out, np.float32)
    arrays["out"] = np.zeros(out, np.float32)
    for name, bits in (("x", s.bf16_input), ("residual", s.bf16_residual),
                       ("out", s.bf16_output)):
        if bits and name in arrays:      # bf16 tensors (``LegoConvSpec.bf16_input``, ...)
            arrays[name] = bf16.bf16_bits(arrays[name])
    return arrays


def kernel_arguments(spec: LegoConvSpec, rng) -> list[np.ndarray]:
    """``random_inputs`` as the fused kernel takes them (bank packed or transformed), in
    order."""
    arrays = random_inputs(spec, rng)
    if spec.winograd:
        arrays["bank"] = winograd.transform_bank(arrays["bank"], spec.winograd, spec.bank_block)
    elif spec.bf16:
        arrays["bank"] = bf16.kernel_bank(arrays["bank"], spec)
    else:
        arrays["bank"] = pack_bank(arrays["bank"], spec.bank_block)
    return list(arrays.values())


def build_alone(func: tirx.PrimFunc, target: Target, database=None):
    """``func`` scheduled as a model would schedule it (its record in ``database`` if any,
    else the default schedule) and built: (runtime module with the kernel as ``main``,
    whether a tuned record was applied)."""
    from . import pipeline

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    mod, tuned, _ = pipeline.schedule(mod, target, database)
    return tvm.compile(mod, target=codegen_target(target)).mod, bool(tuned)


def fused_kernel_run(func: tirx.PrimFunc, spec: LegoConvSpec, target: Target, database=None
                     ) -> tuple[Callable[[], object], bool]:
    """A no-argument call of the fused kernel on random data, and whether it is tuned."""
    module, tuned = build_alone(func, target, database)
    kernel = module["main"]
    args = [tvm.runtime.tensor(v) for v in kernel_arguments(spec, np.random.default_rng(0))]
    return (lambda: kernel(*args)), tuned
