"""Thread count of TVM's kernel runtime, set before its thread pool starts."""
from __future__ import annotations

import logging
import os
import sys


def usable_cores() -> int:
    """The logical CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def no_spinning_workers() -> None:
    """Let TVM's idle pool workers sleep instead of spinning (unless the user chose).

    A spinning worker holds a core for milliseconds after each kernel; another library's
    threads that run next on the same cores (oneDNN's OpenMP threads in the oneDNN
    compute-once backend, PyTorch in a side-by-side benchmark) then wait for the scheduler's
    tick: a 1.4 ms oneDNN conv took 4.0 ms after a TVM kernel. Measured here (2-core AMD EPYC,
    2 threads): without spinning, lego_vgg16 and lego_resnet50 run as fast as with it
    (about 6.0 ms both ways; 78-82 ms vs 79-86 ms). Read when the pool starts, so this runs at
    import.
    """
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")


def use_physical_cores() -> None:
    """Run kernels on every physical core this process may use, unless the user chose.

    TVM's runtime otherwise takes half of the logical CPUs (it assumes two hardware threads
    per core), which on a 2-vCPU machine without SMT is one thread. The pool reads the
    variable when it starts, so this runs at import, before any kernel.
    """
    if "TVM_NUM_THREADS" in os.environ or "OMP_NUM_THREADS" in os.environ:
        return
    usable = usable_cores()
    try:
        import psutil
        physical = psutil.cpu_count(logical=False) or usable
    except ImportError:
        physical = usable
    os.environ["TVM_NUM_THREADS"] = str(max(1, min(usable, physical)))


def set_threads(threads: int) -> None:
    """Use ``threads`` threads in TVM's runtime pool, in oneDNN, and in PyTorch if it is loaded.

    Sets ``TVM_NUM_THREADS`` (read when TVM's pool starts, which can be as early as the
    first constant folding) and resizes a pool already started in place. A pool cannot grow
    past the count it started with: call this before compiling anything.
    """
    import tvm

    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    os.environ["TVM_NUM_THREADS"] = str(threads)
    tvm.get_global_func("runtime.config_threadpool")(1, threads)   # 1: the big cores
    running = int(tvm.get_global_func("runtime.NumThreads")())
    if running != threads:
        logging.getLogger("lego_tvm").warning(
            "lego-tvm: TVM's thread pool runs %d threads, not %d: it started with fewer and "
            "cannot grow; set the thread count before compiling anything", running, threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def threads_in_use() -> int:
    """The thread count TVM's pool starts with (``TVM_NUM_THREADS``, which
    ``use_physical_cores`` sets unless the user did)."""
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(name, "").isdigit():
            return max(1, int(os.environ[name]))
    return usable_cores()
