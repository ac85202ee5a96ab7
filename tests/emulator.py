"""The aarch64 emulator that tools/arm-emulator.sh sets up (qemu-user + arm64 CPython + the
aarch64 TVM wheel), for tests that run ARM builds."""
import os
import subprocess

import pytest

ROOT = os.environ.get("LEGO_ARM_EMU", os.path.expanduser("~/.cache/lego-tvm/arm-emu"))
PYTHON = os.path.join(ROOT, "bin", "python-aarch64")
# A plain ARMv8.0-A + NEON core: code that uses an instruction it lacks dies with SIGILL.
QEMU_CPU = "cortex-a72"
HERE = os.path.dirname(os.path.abspath(__file__))


def emulated_env() -> dict:
    # TVM_USE_RUNTIME_LIB: the runtime alone, as on a board (skips the 240 MB compiler library).
    return dict(os.environ, QEMU_CPU=QEMU_CPU, TVM_USE_RUNTIME_LIB="1", TVM_NUM_THREADS="2",
                PYTHONPATH="")


def require_emulator() -> str:
    if not os.access(PYTHON, os.X_OK):
        pytest.fail(f"the aarch64 emulator is not set up ({PYTHON} is missing): run "
                    "`bash tools/arm-emulator.sh setup` (CI's .ci/run does)", pytrace=False)
    return PYTHON


def run_exported_on_arm(folder: str, timeout: int = 600) -> str:
    """Run every exported library in ``folder`` under the emulator (tests/arm_runner.py)."""
    done = subprocess.run([require_emulator(), os.path.join(HERE, "arm_runner.py"), folder],
                          env=emulated_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"emulated run failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done.stdout
