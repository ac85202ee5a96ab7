"""What MetaSchedule's builder and runner workers run for lego-tvm (kept light: no torch).

- The default build imports ``tvm.s_tir.tensor_intrin`` in every worker (about 60 s, mostly
  CUDA intrinsics), longer than the builder's timeout; CPU builds do not need it.
- The default runner fills every argument with random data, so the fused operator's int32
  index table would read out of bounds and kill every trial. Integer arguments are filled
  with zeros (a valid index), floating-point ones with random data.
"""
from __future__ import annotations

import numpy as np
import tvm


def build(mod, target, _params=None):
    """MetaSchedule's default build, minus the tensor-intrinsics import."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


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
