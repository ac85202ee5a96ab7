"""Whole-model benchmark on a device reached over TVM RPC (an ARM board).

Only TVM-built competitors run there (PyTorch is not on the board): lego-tvm with default
schedules, tuned with the given logs, and TVM without the Lego pass. Each is compiled and
cross-linked here, uploaded, checked against PyTorch (run here) and timed there with TVM's
time evaluator. Results carry the device's description; numbers from an emulated device
are labelled as such and mean nothing about speed.
"""
from __future__ import annotations

import os
import statistics
import tempfile
from typing import Callable

import torch

from .models import LABELS
from ..support.accuracy import max_relative_error
from ..tuning.remote import Remote, describe
from ..support.targets import resolve_target, target_arch


def bench_model_remote(name: str, target, remote: Remote, tuning_logs: list[str] | None = None,
                       repeat: int = 30, batch: int = 1,
                       progress: Callable[[str], None] = print) -> dict:
    from ..compiler import compile as lego_compile
    from ..nn.zoo import get_model

    tvm_target = resolve_target(target)
    model, example = get_model(name, batch=batch)
    with torch.no_grad():
        reference = model(example).numpy()
    session = remote.connect()
    device_info = describe(session, target_arch(tvm_target))
    progress(f"[{name}] remote device: {device_info['hardware']} ({remote})")
    variants = [("lego_tvm", True, None), ("tvm_no_pass", False, None)]
    if tuning_logs:
        variants.insert(1, ("lego_tvm_tuned", True, tuning_logs))
    times, errors = {}, {}
    for key, fuse, logs in variants:
        progress(f"[{name}] compiling {LABELS[key]} for {tvm_target.attrs.get('mcpu') or target}")
        compiled = lego_compile(model, (example,), target=tvm_target, fuse_lego=fuse,
                                tuning_logs=logs)
        progress(f"[{name}] timing {LABELS[key]} remotely ({repeat} runs)")
        times[key], errors[key] = time_remotely(session, compiled, example, reference, repeat,
                                                f"{name}-{key}")
    return {"model": name, "batch": batch, "input_shape": list(example.shape),
            "median_ms": times, "max_rel_error": max(errors.values()),
            "device": device_info, "remote": str(remote)}


def time_remotely(session, compiled, example: torch.Tensor, reference, repeat: int,
                  name: str) -> tuple[float, float]:
    """A compiled model exported as ``<name>.so``, uploaded and run on the device of an RPC
    ``session``: (median ms over ``repeat`` runs, max relative error against ``reference``).
    Give each model of a session its own name: the device's loader keeps a loaded path."""
    import tvm
    from tvm import relax

    device = session.cpu()
    x = tvm.runtime.tensor(example.numpy(), device)
    with tempfile.TemporaryDirectory() as folder:
        library = compiled.export(os.path.join(folder, f"{name}.so"))
        session.upload(library)
        vm = relax.VirtualMachine(session.load_module(os.path.basename(library)), device)
        error = max_relative_error(vm["main"](x).numpy(), reference)
        vm.set_input("main", x)
        timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=repeat)
        return statistics.median(timer("main").results) * 1e3, error
