"""Thread count of TVM's kernel runtime, set before its thread pool starts."""
from __future__ import annotations

import os


def use_physical_cores() -> None:
    """Run kernels on every physical core this process may use, unless the user chose.

    TVM's runtime otherwise takes half of the logical CPUs (it assumes two hardware threads
    per core), which on a 2-vCPU machine without SMT is one thread. The pool reads the
    variable when it starts, so this runs at import, before any kernel.
    """
    if "TVM_NUM_THREADS" in os.environ or "OMP_NUM_THREADS" in os.environ:
        return
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import psutil
        physical = psutil.cpu_count(logical=False) or usable
    except ImportError:
        physical = usable
    os.environ["TVM_NUM_THREADS"] = str(max(1, min(usable or 1, physical)))
