"""lego-tvm in bf16 (``precision="bf16"``) as a benchmark column, beside OpenVINO's default
precision (bf16 on CPUs that have it): never the fp32 bar, shown with its measured error."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..support.accuracy import max_relative_error
from ..support.targets import host_has_bf16, resolve_target

KEY = "lego_tvm_bf16"
LABEL = "lego-tvm, bf16"
OPENVINO_BF16 = "openvino_default"


def bf16_competitor(module, example, reference: np.ndarray, target,
                    progress: Callable[[str], None], name: str):
    """``(run, error)``: ``module`` compiled in bf16 for ``target`` (the host CPU, with its
    AVX512_BF16 enabled) as a no-argument call on ``example``, and its max relative error
    against ``reference``; None (with a line saying why) where this CPU lacks AVX512_BF16."""
    from ..backend.precision import with_host_bf16
    from ..compiler import compile as lego_compile

    if not host_has_bf16():
        progress(f"[{name}] skipping {LABEL}: this CPU lacks AVX512_BF16")
        return None
    progress(f"[{name}] compiling: {LABEL}")
    compiled = lego_compile(module, (example,), with_host_bf16(resolve_target(target)),
                            precision="bf16")
    x = example.numpy()
    return (lambda: compiled(x)), max_relative_error(compiled(x), reference)


def add_bf16(runs: dict, errors: dict, fields: dict, competitor) -> None:
    """Put a ``bf16_competitor`` result (if any) among a benchmark's runs and errors."""
    if competitor is not None:
        runs[KEY], errors[KEY] = competitor
        fields[f"{KEY}_precision"] = "bf16"


def vs_openvino_bf16(times: dict) -> str:
    """The bf16 table cell: OpenVINO default precision's time over lego-tvm bf16's."""
    if KEY not in times or OPENVINO_BF16 not in times:
        return "-"
    return f"{times[OPENVINO_BF16] / times[KEY]:.2f}x"
