"""Run a compiled or exported model with the TVM runtime alone (this module never imports torch).

An exported model is one shared library (the Relax VM executable with every weight inside)
plus a small JSON file beside it (``<library>.json``) with the input signature and the
lego-tvm report. The library alone also runs with plain TVM:
``relax.VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())["main"](x)``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading

import numpy as np
import tvm
from tvm import relax

from .support.targets import cross_compiler, parse_target, why_not_runnable_here
from .support.tvm_compat import HOST, to_device, to_numpy


class InputError(ValueError):
    """An input does not match what the model was compiled for."""


class ArtifactError(ValueError):
    """An exported model's files are damaged or do not belong together; the message names
    the file and the field."""


class Model:
    """A compiled Lego model: call it with numpy arrays (or torch tensors) to run it.

    A model built for another CPU (an ARM board, AVX-512 on an AVX2 machine) cannot be
    called here; ``export`` it and run it there.

    Calling one model from several threads is safe: each thread runs its own Relax VM over
    the shared library (one VM is not re-entrant: shared by 4 threads it broke its register
    file). Measured on a 2-core Xeon, lego_vgg16 served 452 requests/s to 4 client threads
    with a VM per thread and 328 with one VM behind a lock (lego_resnet50: docs/benchmarks.md,
    where the per-thread pools oversubscribe the cores)."""

    def __init__(self, executable, inputs: list[dict], report: dict | None, target: str,
                 device=None, copied_outputs: list[int] | None = None, outputs=None):
        self._executable = executable
        self.device = device if device is not None else tvm.cpu()
        self._vms = threading.local()  # each thread's VM, made on its first call
        self._checked = False          # whether this machine can run the code
        self._lock = threading.Lock()
        self.inputs = inputs          # [{"shape": [...], "dtype": "float32"}, ...]
        self.report_dict = report or {}
        self.target = target          # str(tvm Target), JSON
        # Outputs a call does not compute (constants, inputs passed through): returned as
        # copies, or a caller changing one would change what later calls return.
        self.copied_outputs = list(copied_outputs or [])
        self.source: str | None = None   # the library a loaded model came from
        # How the outputs nest (frontend.pytorch.output_structure); None: a tensor, or a
        # flat tuple of several (models exported before 2026-11-30).
        self.output_structure = outputs

    @property
    def executable(self):
        """The TVM Relax VM executable (for ``relax.VirtualMachine`` and its time evaluator)."""
        return self._executable

    @property
    def uses_onednn(self) -> bool:
        """Whether some Lego feature maps are computed by oneDNN (see ``compute_once``): the
        lego-tvm oneDNN extension must then be loaded before the model runs."""
        return any(c.get("backend") == "onednn" for c in self.report_dict.get("compute_once", []))

    def _main(self):
        """This thread's VM's ``main`` (the VM made on the thread's first call, once the code
        is known to run here)."""
        main = getattr(self._vms, "main", None)
        if main is None:
            with self._lock:
                if not self._checked:
                    reason = why_not_runnable_here(parse_target(self.target))
                    if reason:
                        raise RuntimeError(f"this model cannot run on this machine: {reason}. "
                                           "Export it (model.export('model.so')) and run it "
                                           "where it belongs.")
                    if self.uses_onednn:
                        _load_onednn()
                    self._checked = True
            self._vms.vm = relax.VirtualMachine(self._executable, self.device)
            main = self._vms.main = self._vms.vm["main"]
        return main

    def __call__(self, *args):
        main = self._main()                # first: says so if the code cannot run here
        if len(args) != len(self.inputs):
            raise InputError(f"the model takes {len(self.inputs)} input(s), got {len(args)}")
        tensors, torch_out = [], False
        for i, (arg, want) in enumerate(zip(args, self.inputs)):
            if type(arg).__module__.startswith("torch"):
                torch_out = True
                tensors.append(self._from_torch(i, arg, want))
                continue
            arr = np.asarray(arg)
            self._check(i, arr.shape, _dtype_name(arr.dtype), want)
            tensors.append(to_device(arr, self.device))
        try:
            result = main(*tensors)
        except RuntimeError as err:
            raise self._signature_error(err) from None
        outputs = [to_numpy(o) for o in _flatten(result)]
        for i in self.copied_outputs:
            outputs[i] = outputs[i].copy()
        if torch_out:     # shared, not copied (torch.from_dlpack measured 0.4 us slower)
            from_numpy = sys.modules["torch"].from_numpy   # the caller has imported torch
            outputs = [from_numpy(o) for o in outputs]
        if self.output_structure is None:
            return outputs[0] if len(outputs) == 1 else tuple(outputs)
        return _nest(iter(outputs), self.output_structure)

    def _signature_error(self, err: RuntimeError) -> Exception:
        """The VM refusing an input the signature let through: the signature (a loaded
        model's ``.json``) does not describe the library; any other error as it was."""
        found = re.search(r"ErrorContext\(fn=main, loc=param\[(\d+)\].*annotation=(.*?)\)\s",
                          str(err))
        if found is None:
            return err
        i, expected = int(found.group(1)), found.group(2)
        where = f"{self.source}.json" if self.source else "the model's signature"
        return ArtifactError(f"{where}: 'inputs'[{i}] says shape {self.inputs[i]['shape']} and "
                             f"dtype {self.inputs[i]['dtype']}, but the library takes {expected}"
                             " (was the file edited?)")

    def _check(self, i: int, shape, dtype: str, want: dict) -> None:
        if dtype != want["dtype"] or not _fits(list(shape), want["shape"]):
            wanted = ["batch" if d is None else d for d in want["shape"]]
            raise InputError(f"input {i} has shape {list(shape)} and dtype {dtype}; the model "
                             f"was compiled for shape {wanted} and dtype {want['dtype']}")

    def _from_torch(self, i: int, tensor, want: dict):
        """A torch tensor as a TVM tensor: shared through DLPack when it is a contiguous,
        64-byte aligned CPU tensor and the model runs on the CPU; else copied."""
        dtype = _dtype_name(tensor.dtype)
        if dtype != want["dtype"]:
            raise InputError(f"input {i} is a torch tensor of dtype {tensor.dtype}; the "
                             f"model was compiled for {want['dtype']}")
        self._check(i, tensor.shape, dtype, want)
        if tensor.requires_grad:
            tensor = tensor.detach()
        if (tensor.is_cpu and self.device.dlpack_device_type() == HOST
                and tensor.is_contiguous() and tensor.data_ptr() % 64 == 0):
            return tvm.runtime.from_dlpack(tensor)
        return to_device(tensor.cpu().numpy(), self.device)

    def export(self, path: str) -> str:
        """Write the deployable library to ``path`` and its signature to ``path + '.json'``.

        Both are written to temporary files first and renamed, so a failed export never
        leaves a half-written artifact. A model for another CPU architecture is linked with
        that architecture's cross compiler (``aarch64-linux-gnu-gcc`` for ARM).
        """
        cc = cross_compiler(parse_target(self.target))   # before anything is written
        path = os.path.abspath(path)
        folder = os.path.dirname(path)
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise OSError(f"cannot write the exported model to {path}: "
                          f"{folder} is not a writable folder")
        if os.path.isdir(path):
            raise OSError(f"cannot write the exported model to {path}: it is a folder; give "
                          "a file name such as model.so")
        if os.path.isdir(path + ".json"):
            raise OSError(f"cannot write the exported model's description to {path}.json: it "
                          "is a folder")
        if os.path.splitext(path)[1] != ".so":
            raise ValueError(f"cannot export to {path}: the library's name must end in .so "
                             "(TVM chooses the loader by the extension)")
        meta = {"format": "lego-tvm/1", "inputs": self.inputs, "target": self.target,
                "report": self.report_dict, "needs": self.runtime_needs(),
                "copied_outputs": self.copied_outputs, "outputs": self.output_structure}
        suffix = os.path.splitext(path)[1] or ".so"
        lib_tmp = tempfile.NamedTemporaryFile(dir=folder, suffix=suffix, delete=False).name
        meta_tmp = lib_tmp + ".json"
        try:
            if self.source is not None:        # loaded from a library: copy it as it is
                shutil.copyfile(self.source, lib_tmp)
            else:
                self._executable.export_library(lib_tmp, **({"cc": cc} if cc else {}))
            meta["library"] = _fingerprint(lib_tmp)
            with open(meta_tmp, "w") as f:
                json.dump(meta, f, indent=1)
            os.replace(lib_tmp, path)
            os.replace(meta_tmp, path + ".json")
        finally:
            for leftover in (lib_tmp, meta_tmp):
                if os.path.exists(leftover):
                    os.remove(leftover)
        return path


    def runtime_needs(self) -> list[str]:
        """What the exported library needs at run time besides the TVM runtime."""
        if not self.uses_onednn:
            return []
        from .backend.onednn import find_onednn
        return [f"oneDNN ({find_onednn()[1]}, Debian package libdnnl2 or PyPI onednn) and "
                "the lego-tvm oneDNN extension: lego_tvm.load() builds and loads it; plain TVM "
                "must load it first (ctypes.CDLL(lego_tvm.backend.onednn.extension_path()))"]


def _load_onednn() -> None:
    from .backend.onednn import OneDNNUnavailable, load

    try:
        load()
    except OneDNNUnavailable as err:
        raise RuntimeError("this model computes Lego feature maps with oneDNN, which cannot be "
                           f"loaded here: {err}") from None


def load(path: str, device=None, allow_unfingerprinted: bool = False) -> Model:
    """Load a model written by ``Model.export`` (needs only TVM and numpy).

    The library is checked against the size and SHA-256 its ``.json`` records before it is
    loaded (loading a truncated library can kill the process with SIGBUS). A ``.json``
    without them (written by hand, or by lego-tvm before 2026-11) is refused unless
    ``allow_unfingerprinted``, and even then the library's ELF headers must fit its size."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no exported model at {path}")
    meta_path = path + ".json"
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path} is missing; it holds the input signature written "
                                "by lego-tvm's export next to the library")
    try:
        with open(meta_path, errors="replace") as f:
            meta = json.load(f)
    except ValueError as err:
        raise ValueError(f"{meta_path} is corrupt ({err}); export the model again") from None
    if not isinstance(meta, dict) or meta.get("format") != "lego-tvm/1":
        raise ArtifactError(f"{meta_path} is not a lego-tvm model description (its 'format' "
                            "is not lego-tvm/1)")
    _check_inputs(meta, meta_path)
    # Loading a truncated library can kill the process (SIGBUS), so it is checked first.
    wanted = meta.get("library")
    if not wanted:
        if not allow_unfingerprinted:
            raise ArtifactError(f"{meta_path} has no 'library' fingerprint, so {path} cannot be "
                                "checked before loading; export the model again, or pass "
                                "allow_unfingerprinted=True to load it after an ELF check")
        _check_elf(path)
    elif (found := _fingerprint(path)) != wanted:
        raise ArtifactError(f"{path} is not the library exported with {meta_path} ('library': "
                            f"{found['bytes']} bytes, {wanted.get('bytes')} exported): truncated "
                            "or changed since; export the model again")
    reason = meta.get("target") and why_not_runnable_here(parse_target(meta["target"]))
    if reason:
        raise RuntimeError(f"{path} cannot be loaded on this machine: {reason}")
    model = Model(tvm.runtime.load_module(path), meta["inputs"], meta.get("report"),
                  meta.get("target", ""), device, meta.get("copied_outputs", []),
                  meta.get("outputs"))
    model.source = os.path.abspath(path)
    return model


def _nest(flat, structure):
    """The flat outputs, nested as ``structure`` says (see ``Model.output_structure``)."""
    if structure == "leaf":
        return next(flat)
    (kind, children), = structure.items()
    if kind == "dict":
        return {key: _nest(flat, child) for key, child in children}
    nested = [_nest(flat, child) for child in children]
    return tuple(nested) if kind == "tuple" else nested


def _check_inputs(meta: dict, meta_path: str) -> None:
    inputs = meta.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(
            isinstance(i, dict) and isinstance(i.get("shape"), list)
            and isinstance(i.get("dtype"), str) for i in inputs):
        raise ArtifactError(f"{meta_path}: 'inputs' must be a list of {{'shape': [...], "
                            "'dtype': ...}} as export writes it; export the model again")


def _check_elf(path: str) -> None:
    """A shared library whose ELF headers fit its size (a truncated one fails this)."""
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise ArtifactError(f"{path} is not a 64-bit little-endian ELF shared library")
        phoff, shoff = struct.unpack_from("<QQ", head, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    ends = [shoff + shentsize * shnum, phoff + phentsize * phnum]
    if len(table) == phentsize * phnum:
        for i in range(phnum):          # Elf64_Phdr: p_offset at 8, p_filesz at 32
            (offset,), (filesz,) = (struct.unpack_from("<Q", table, i * phentsize + at)
                                    for at in (8, 32))
            ends.append(offset + filesz)
    if max(ends) > size:
        raise ArtifactError(f"{path} is truncated: its ELF headers need {max(ends)} bytes and "
                            f"it has {size}")


def _fingerprint(path: str) -> dict:
    with open(path, "rb") as f:
        return {"bytes": os.path.getsize(path), "sha256": hashlib.sha256(f.read()).hexdigest()}


def _fits(shape: list[int], wanted: list) -> bool:
    """``wanted`` has None for a dimension chosen at call time (a batch of at least one)."""
    return len(shape) == len(wanted) and all(
        (w is None and d >= 1) or d == w for d, w in zip(shape, wanted))


def _flatten(result) -> list:
    """The VM's result (a tensor or nested tuples of them) as a flat list of tensors."""
    if isinstance(result, (list, tuple)) or type(result).__name__ == "Array":
        return [o for r in result for o in _flatten(r)]
    return [result]


# numpy and torch dtypes -> their names, filled as they are met: str(dtype) takes 2 us.
_DTYPE_NAMES: dict = {}


def _dtype_name(dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).replace("torch.", "")
    return name
