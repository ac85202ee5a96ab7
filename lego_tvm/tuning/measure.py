"""What MetaSchedule's builder and runner workers run for lego-tvm (kept light: no torch).

- The default build imports ``tvm.s_tir.tensor_intrin`` in every worker (about 60 s, mostly
  CUDA intrinsics), longer than the builder's timeout; CPU builds do not need it.
- The default runner fills every argument with random data, so the fused operator's int32
  index table would read out of bounds and kill every trial. Integer arguments are filled
  with zeros (a valid index), floating-point ones with random data.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import tvm

from ..support.targets import codegen_target


def build(mod, target, _params=None):
    """MetaSchedule's default build, minus the tensor-intrinsics import."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=codegen_target(target))


def alloc_arguments(device, args_info, alloc_repeat):
    rng = np.random.default_rng(0)
    repeated = []
    for _ in range(alloc_repeat):
        args = []
        for _kind, dtype, shape in args_info:
            if "int" in dtype:
                array = np.zeros(shape, dtype)
            else:
                array = rng.uniform(-1, 1, shape).astype(dtype)
            args.append(tvm.runtime.tensor(array, device))
        repeated.append(args)
    return repeated


def alloc_remote_arguments(_session, device, args_info, alloc_repeat):
    """``alloc_arguments`` for MetaSchedule's RPC runner (arrays are copied to the device)."""
    return alloc_arguments(device, args_info, alloc_repeat)


def export_with(cc: str, mod) -> str:
    """Builder export for another CPU: a shared library linked by the cross compiler ``cc``
    (MetaSchedule's default writes object files that the board would have to link)."""
    path = os.path.join(tempfile.mkdtemp(prefix="lego-tvm-trial-"), "trial.so")
    mod.export_library(path, cc=cc)
    return path
