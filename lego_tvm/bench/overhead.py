"""Per-call overhead: what a compiled model's call costs beyond its kernels, on a model that
is one elementwise op on 64 floats (so the op itself takes well under a microsecond).

Timed side by side, each a loop of ``CALLS`` calls (best of alternating rounds): PyTorch
eager; lego-tvm called with a torch tensor and with a numpy array (the input shared with
TVM through DLPack, the output shared back); and the Relax VM's ``main`` called with a TVM
tensor, the floor any TVM-built model pays.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..support.timing import best_of_rounds

CALLS = 2000
OVERHEAD_LABELS = {"torch": "PyTorch eager", "lego_tvm_torch": "lego-tvm, torch tensor in and out",
                   "lego_tvm_numpy": "lego-tvm, numpy array in and out",
                   "vm": "Relax VM main alone (TVM tensor)"}


def bench_overhead(progress: Callable[[str], None] = print) -> dict:
    """Microseconds per call of each way of calling the one-op model."""
    import tvm

    from ..compiler import compile as lego_compile
    from ..support.tvm_compat import to_device

    progress("[overhead] compiling a one-op model (ReLU on 64 floats)")
    model = torch.nn.ReLU().eval()
    x = torch.randn(1, 64)
    array = x.numpy()
    compiled = lego_compile(model, (x,), tuning_logs=None)
    compiled(x)
    vm = tvm.relax.VirtualMachine(compiled.executable, tvm.cpu())
    main, tensor = vm["main"], to_device(array, tvm.cpu())
    calls = {"torch": lambda: model(x), "lego_tvm_torch": lambda: compiled(x),
             "lego_tvm_numpy": lambda: compiled(array), "vm": lambda: main(tensor)}
    progress(f"[overhead] timing {len(calls)} ways x {CALLS} calls")
    with torch.no_grad():
        loops = [(lambda call=call: [call() for _ in range(CALLS)]) for call in calls.values()]
        times = best_of_rounds(loops)
    return {key: ms * 1e3 / CALLS for key, ms in zip(calls, times)}


def format_overhead_table(us: dict) -> str:
    lines = ["| per call, one-op model | " + " | ".join(OVERHEAD_LABELS[k] for k in us) + " |",
             "|---|" + "---:|" * len(us),
             "| microseconds | " + " | ".join(f"{v:.1f}" for v in us.values()) + " |"]
    extra = us["lego_tvm_torch"] - us["torch"]
    lines.append(f"\nlego-tvm's call costs {extra:.1f} us more than PyTorch eager's with torch "
                 f"tensors; {us['lego_tvm_numpy'] - us['vm']:.1f} us of a numpy call go to "
                 "lego-tvm's checks and conversions around the VM")
    return "\n".join(lines)
