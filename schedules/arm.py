"""aarch64 NEON for the fused Lego schedule (``lego_cpu.py`` holds the body, shared with x86
and with the tunable MetaSchedule rule).

NEON (Advanced SIMD, every ARMv8-A core) has 32 registers of 4 floats. The bank is packed in
blocks of 4 filters, so the micro-kernel is one 128-bit weight load, one broadcast input
per accumulator (``ld1r`` or ``fmla v.4s, v.4s, v.s[i]``) and one ``fmla`` per accumulator;
24 accumulators leave 8 registers for the weights and inputs. Cortex-A72 (Raspberry Pi 4)
has 32 KiB L1D and 1 MiB L2 shared by 4 cores, Cortex-A76 and Neoverse N1 64 KiB L1D and
256-512 KiB / 1 MiB private L2: a 64 KiB Lego tile per task fits all of them.

Nothing here is tuned on real ARM hardware yet: the choices follow the register file and
cache sizes above, and are verified for correctness under emulation.
"""
from __future__ import annotations

from .vector_unit import SimdProfile

NEON = SimdProfile("neon", lanes=4, accumulators=24, lego_tile_bytes=64 * 1024)
