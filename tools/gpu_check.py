"""The GPU check, as the device kit runs it (tools/device/gpu-check.sh; docs/cuda.md):
``lego_tvm.bench.gpu`` with its flags (--smoke, --device cpu --quick, --budget-s, --trials).

    python tools/gpu_check.py --out gpu-check            # everything, into gpu-check/
"""
import sys

from lego_tvm.bench.gpu import main

if __name__ == "__main__":
    sys.exit(main())
