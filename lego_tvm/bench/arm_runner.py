"""Runs on aarch64 (qemu-user here, or a board) with only TVM and numpy installed.

For every exported lego-tvm library ``<name>.so`` in a folder: load it with the plain TVM
runtime, run it on ``<name>.in.npz`` (arrays arg0, arg1, ...) and write ``<name>.out.npz``.
"""
import glob
import platform
import sys

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine


def flatten(result):
    if isinstance(result, tvm.runtime.Tensor):
        return [result.numpy()]
    return [array for item in result for array in flatten(item)]


def main(folder: str) -> None:
    assert platform.machine() == "aarch64", platform.machine()
    for library in sorted(glob.glob(f"{folder}/*.so")):
        stem = library[:-len(".so")]
        inputs = np.load(stem + ".in.npz")
        args = [tvm.runtime.tensor(inputs[f"arg{i}"]) for i in range(len(inputs.files))]
        vm = VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
        np.savez(stem + ".out.npz", *flatten(vm["main"](*args)))
        print("ran", library, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
