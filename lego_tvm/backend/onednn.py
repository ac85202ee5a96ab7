"""The optional oneDNN backend of the compute-once stage: find oneDNN, build and load the
small C++ extension (``onednn_ext/lego_onednn.cc``) that registers ``lego_tvm.onednn_conv2d``
as a TVM FFI global function, which Relax calls with ``call_dps_packed``.

oneDNN comes from Debian's ``libdnnl-dev`` (``apt-get install libdnnl-dev``) or from PyPI
(``pip install onednn onednn-devel``), or from ``LEGO_TVM_ONEDNN_ROOT`` (a folder with
``include/`` and ``lib/``; when set, the only place looked at). The extension is compiled once with the system C++ compiler into
``~/.cache/lego-tvm/onednn/`` (``LEGO_TVM_CACHE`` moves it). Nothing here imports torch.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import tvm

FUNCTION = "lego_tvm.onednn_conv2d"
SOURCE = os.path.join(os.path.dirname(__file__), "onednn_ext", "lego_onednn.cc")
INSTALL_HINT = ("install oneDNN (Debian/Ubuntu: apt-get install libdnnl-dev; or pip install "
                "onednn onednn-devel) and a C++ compiler (g++)")


class OneDNNUnavailable(RuntimeError):
    """oneDNN, its headers or a C++ compiler is missing, or the extension failed to build."""


_loaded: str | None = None      # path of the loaded extension
_failure: str | None = None     # why it could not be loaded (remembered: one try per process)


def _roots() -> list[str]:
    """Where oneDNN is looked for: only ``LEGO_TVM_ONEDNN_ROOT`` when it is set."""
    env = os.environ.get("LEGO_TVM_ONEDNN_ROOT")
    return [env] if env else [sys.prefix, "/usr/local", "/usr"]


def find_onednn() -> tuple[str, str]:
    """``(include_dir, library_path)`` of the first oneDNN with headers and a library."""
    for root in _roots():
        include = os.path.join(root, "include")
        if not os.path.exists(os.path.join(include, "oneapi", "dnnl", "dnnl.hpp")):
            continue
        # lib/, lib64/ or a multiarch folder such as lib/x86_64-linux-gnu/
        libs = sorted(glob.glob(os.path.join(root, "lib*", "libdnnl.so*"))
                      + glob.glob(os.path.join(root, "lib", "*-linux-gnu", "libdnnl.so*")))
        if libs:
            return include, libs[0]
    raise OneDNNUnavailable(f"oneDNN headers and library not found under {', '.join(_roots())}; "
                            + INSTALL_HINT)


def extension_path() -> str:
    """The built extension, compiled now if this source, oneDNN and TVM FFI have not been."""
    import tvm_ffi.libinfo

    include, library = find_onednn()
    ffi_lib = tvm_ffi.libinfo.find_libtvm_ffi()
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read() + f"{include}|{library}|{ffi_lib}".encode()
                                + _mtime_key(library, ffi_lib)).hexdigest()[:16]
    cache = os.environ.get("LEGO_TVM_CACHE", os.path.expanduser("~/.cache/lego-tvm"))
    path = os.path.join(cache, "onednn", digest, "liblego_tvm_onednn.so")
    if os.path.exists(path):
        return path
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise OneDNNUnavailable("no C++ compiler (g++) to build the oneDNN extension; "
                                + INSTALL_HINT)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".so", delete=False).name
    lib_dirs = {os.path.dirname(library), os.path.dirname(ffi_lib)}
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", SOURCE, "-o", tmp,
           f"-I{include}", *[f"-I{p}" for p in tvm_ffi.libinfo.include_paths()],
           *[f"-L{d}" for d in lib_dirs], *[f"-Wl,-rpath,{d}" for d in lib_dirs],
           f"-l:{os.path.basename(library)}", "-ltvm_ffi"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise OneDNNUnavailable("building the oneDNN extension failed:\n"
                                    + " ".join(cmd) + "\n" + result.stderr[-3000:])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _mtime_key(*paths: str) -> bytes:
    return "|".join(str(os.path.getmtime(p)) for p in paths).encode()


def load() -> str:
    """Build (once) and load the extension; raises ``OneDNNUnavailable`` saying why not."""
    global _loaded, _failure
    if _loaded:
        return _loaded
    if _failure:
        raise OneDNNUnavailable(_failure)
    try:
        path = extension_path()
        # oneDNN's OpenMP threads should not spin between calls: TVM's own thread pool runs
        # the kernels around them on the same cores. libgomp reads this when it loads; where
        # PyTorch's libgomp.so.1 is loaded already, oneDNN shares it and its setting (which
        # is why compile(compute_once="auto") times the whole model too).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if "TVM_NUM_THREADS" in os.environ:
            os.environ.setdefault("OMP_NUM_THREADS", os.environ["TVM_NUM_THREADS"])
        ctypes.CDLL(path)    # its static initializer registers the global functions
    except (OneDNNUnavailable, OSError) as err:
        _failure = str(err)
        raise OneDNNUnavailable(_failure) from None
    _loaded = path
    return path


def why_unavailable() -> str | None:
    """None when the oneDNN backend can be used here, else the reason."""
    try:
        load()
    except OneDNNUnavailable as err:
        return str(err)
    return None


def version() -> str:
    load()
    return str(tvm.get_global_func("lego_tvm.onednn_version")())
