"""What the CPU schedules need to know about a vector unit."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimdProfile:
    """What the CPU schedules need to know about a vector unit (fp32)."""
    name: str
    lanes: int             # fp32 lanes per vector register
    accumulators: int      # vector registers a register tile may hold as accumulators; the
                           # rest hold the weight vector and the broadcast inputs
    lego_tile_bytes: int   # Lego feature tile of one parallel task: fits the per-core L2
    # Fused stages read the whole bank once per task: a task of fewer output pixels than
    # this runs stage by stage instead (1: whenever there are enough tasks).
    fused_min_pixels: int = 1
    max_filter_blocks: int = 64   # filter blocks (weight vectors) in the register tile
    # 1x1 stride-1 layers store their Lego maps pixels innermost (``lego_cpu_flat.py``).
    flat_1x1: bool = False
    # The register tile's reduction: the kernel taps outermost and the input channels
    # innermost (else channels outermost, taps innermost, which LLVM unrolls 9 times).
    channels_innermost: bool = False
    # AMX with bf16 tiles: a bf16 kernel computes its maps with tdpbf16ps (x86_amx.py).
    amx_bf16: bool = False
