"""Running aarch64 builds here, under the user-mode emulator ``tools/arm-emulator.sh`` sets
up (qemu-user, an arm64 CPython, the aarch64 TVM wheel): a check of correctness, never of
speed.
"""
from __future__ import annotations

import os
import subprocess

ROOT = os.environ.get("LEGO_ARM_EMU", os.path.expanduser("~/.cache/lego-tvm/arm-emu"))
PYTHON = os.path.join(ROOT, "bin", "python-aarch64")
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arm_runner.py")
# CPUs qemu 7.2 emulates by name; others run as "max" (every feature it knows).
QEMU_CPUS = ("cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76", "neoverse-n1")


def emulator_ready() -> bool:
    return os.access(PYTHON, os.X_OK)


def emulated_env(cpu: str = "cortex-a72") -> dict:
    """The emulated CPU (an ARMv8.0-A core by default: an instruction it lacks is SIGILL),
    and TVM's runtime library alone, as on a board (not the 240 MB compiler library)."""
    return dict(os.environ, QEMU_CPU=cpu if cpu in QEMU_CPUS else "max",
                TVM_USE_RUNTIME_LIB="1", TVM_NUM_THREADS="2", PYTHONPATH="")


def run_exported(folder: str, cpu: str = "cortex-a72", timeout: int = 600) -> str:
    """Run every exported ``<name>.so`` in ``folder`` on ``<name>.in.npz`` under the emulator
    (``arm_runner.py``), writing ``<name>.out.npz``; its output, or RuntimeError."""
    done = subprocess.run([PYTHON, RUNNER, folder], env=emulated_env(cpu), capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"emulated run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout
