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

# Channels innermost: with the 9 taps innermost (unrolled), LLVM's schedules for these cores
# keep several taps' inputs and weights live and spill: llvm-mca 19 estimates 128ch 28x28 on
# a 16-core Neoverse N1 (stage by stage) at 68% of the FMA peak with 58 vector spills per
# iteration, 256->512 at 7x7 at 57% with 68. Channels innermost: no spills, 93-99%
# (``lego-tvm bench --estimate``, docs/estimate.md).
# At most 4 filter blocks in the register tile: 8 blocks x 2 pixels (1x1, 14x14) ran at
# 82-87% where 2 blocks x 7 pixels ran at 98% (estimated, Cortex-A76).
NEON = SimdProfile("neon", lanes=4, accumulators=24, lego_tile_bytes=64 * 1024,
                   max_filter_blocks=4, channels_innermost=True)
