"""The CPU schedule of the fused Lego convolution (fp32), shared by x86 and ARM.

The bank is packed ``[m/V, b, kh, kw, V]`` (V = SIMD lanes, NCHW[x]c after NeoCPU), so the
micro-kernel is: one vector load of V filters' weight per filter block of the register
tile, one broadcast per input pixel, one FMA per accumulator (filter block x pixel). The
input may be NCHW or NCHW[x]c, the output too (``transform.blocked_layout``). Loop structure:

    for (image, row_tile) in parallel:                     # tasks
        pad the input rows the tile needs                   # stays in L1/L2
        for split, filter_blocks, row_block, col_block:     # compute once
            acc[blocks x rows x cols x V] = 0               # registers
            for rc, ry, rx: acc += x_tile (broadcast) * bank (vector)
            store acc -> Lego tile                          # o*m*rows*W floats, sized for L2
        for out_channel, row, col: gather-sum the Lego tile + epilogue

When there are too few row tiles to keep every core busy (small feature maps), the stages
run one after the other instead, each parallel over its own channels.

The body is ``apply_lego_schedule(sch, config)``; ``default_config`` picks the knobs from the
shapes and the target's ``SimdProfile`` (``x86.py``, ``arm.py``), and a tuner may pick
others. One body, so tuned and default schedules cannot drift, on every CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from ..op.bf16 import PACK_BLOCK
from ..op.fused_op import (GATHER_BLOCK, GATHER_SPEC_ATTR, LEGO_BLOCK, PAD_BLOCK, LegoConvSpec,
                           spec_of)
from .lego_cpu_flat import (FlatLegoConfig, amx_bank_fits_l2, apply_flat_schedule,
                            default_amx_config, default_flat_config, tunable_flat_schedules)
from .lego_cpu_winograd import (WinogradConfig, apply_winograd_schedule,
                                default_winograd_config, tunable_winograd_schedules)
from .simd import simd_profile
from .vector_unit import SimdProfile
from .x86_amx import amx_unsupported, pixels_per_tile, tensorize_tile
from .x86_bf16 import tensorize_dot
from ..support.tiling import (divisors, has_block, largest_register_tile, num_cores,
                              sample_divisor)


# With channels innermost (``SimdProfile.channels_innermost``), input channels per loop step.
CHANNELS_PER_STEP = 4


@dataclass(frozen=True)
class LegoCpuConfig:
    """The knobs. Tile sizes are ints (default schedule) or sampled variables (tuning);
    ``fuse_stages`` picks the loop structure, so the tuner explores one space per value."""
    tile_rows: int        # output rows per parallel task (fused stages)
    reg_rows: int         # register tile: filter blocks x rows x cols accumulators of V
    reg_cols: int         # filters each
    fuse_stages: bool     # compute the Lego tile inside each task (else stage by stage)
    reg_filters: int = 1
    channels_innermost: bool = False   # the reduction's order (see SimdProfile)
    # bf16 on AMX (x86_amx.py): reg_cols pixels x 16 filters a tile, the reduction inside it.
    amx: bool = False


def default_config(spec: LegoConvSpec, cores: int, simd: SimdProfile
                   ) -> LegoCpuConfig | FlatLegoConfig | WinogradConfig:
    if spec.winograd:
        return default_winograd_config(spec, cores, simd)
    if spec.flat_pixels:
        on_amx = spec.bf16 and simd.amx_bf16
        return (default_amx_config if on_amx else default_flat_config)(spec, cores, simd)
    s = spec
    row_bytes = s.splits * s.lego_filters * s.out_width * 4
    limit = max(1, simd.lego_tile_bytes // row_bytes)
    candidates = [t for t in range(1, s.out_height + 1) if s.out_height % t == 0 and t <= limit]
    # A batch chosen at call time is planned for as one image.
    tasks = {t: (s.batch or 1) * (s.out_height // t) for t in candidates}
    # At least two tasks per core; then the best balance (7 tasks on 2 threads wastes an
    # eighth of the time, measured), then the largest tile. On AMX any tile size while every
    # task can reread the bank from L2: the maps cost little to compute, and fused tasks of
    # 1-2 rows beat stage by stage (bf16 layers alone, 2 threads: 3x3 256ch at 14x14 0.15
    # against 0.20 ms, 1x1 2048->512 at 7x7 0.11 against 0.15 ms), but a 1x1 1024->2048
    # (a 4 MiB bank) ran 0.85 against 0.34 ms.
    amx = s.bf16 and simd.amx_bf16 and amx_unsupported(s) is None
    enough = [t for t in candidates if tasks[t] >= 2 * cores and (
        (amx and amx_bank_fits_l2(s)) or t * s.out_width >= simd.fused_min_pixels)]
    fuse_stages = bool(enough)
    tile_rows = max(enough or [1], key=lambda t: (
        tasks[t] / (cores * -(-tasks[t] // cores)), t))
    rows = tile_rows if fuse_stages else s.out_height
    if amx:
        return LegoCpuConfig(tile_rows, 1, pixels_per_tile(s.out_width), fuse_stages, amx=True)
    reg_filters, reg_rows, reg_cols = register_tile(s, rows, simd)
    return LegoCpuConfig(tile_rows, reg_rows, reg_cols, fuse_stages, reg_filters,
                         simd.channels_innermost)


def register_tile(spec: LegoConvSpec, rows: int, simd: SimdProfile) -> tuple[int, int, int]:
    """(filter blocks, rows, cols) of the register tile (``tiling.largest_register_tile``),
    at most the profile's filter blocks. Measured on the stride-2 layers (AMD EPYC, AVX2): 7
    accumulators of one filter block ran at 55-61 GFLOP/s, 2-4 blocks x 2-4 pixels (8) at
    70-72."""
    blocks = simd.max_filter_blocks
    if simd.channels_innermost and spec.split_channels <= CHANNELS_PER_STEP:
        # The whole reduction is one unrolled step (an RGB input): every tap's weights are
        # live at once, so one filter block (estimated on Cortex-A76, 3->64 3x3: 4 blocks x
        # 4 pixels 93% with 9 spills, 1 block x 16 pixels 94% with none).
        blocks = 1
    return largest_register_tile(spec.lego_filters // spec.bank_block, rows, spec.out_width,
                                 blocks, simd.accumulators)


def apply_lego_schedule(sch: s_tir.Schedule,
                        config: LegoCpuConfig | FlatLegoConfig | WinogradConfig) -> None:
    """Schedule the fused Lego blocks of ``sch`` in place."""
    if isinstance(config, WinogradConfig):
        apply_winograd_schedule(sch, config)
        return
    if isinstance(config, FlatLegoConfig):
        apply_flat_schedule(sch, config)
        return
    gather = sch.get_sblock(GATHER_BLOCK)
    lego = sch.get_sblock(LEGO_BLOCK)
    # A bf16 kernel (op/bf16.py): its input packed in bf16 stands for the padding.
    bf16 = has_block(sch, PACK_BLOCK)
    pad_block = PACK_BLOCK if bf16 else PAD_BLOCK
    pad = sch.get_sblock(pad_block) if has_block(sch, pad_block) else None

    # Step 1: where the Lego tile lives.
    image, channel, row, col, *lane = sch.get_loops(gather)   # lane: NCHW[x]c output
    if config.fuse_stages:
        row_tile, row_in = sch.split(row, [None, config.tile_rows])
        sch.reorder(image, row_tile, channel, row_in, col, *lane)
        task = sch.fuse(image, row_tile)
        sch.parallel(task)
        sch.compute_at(lego, task, preserve_unit_loops=True)
        if pad is not None:
            sch.compute_at(pad, task, preserve_unit_loops=True)
    else:
        sch.parallel(sch.fuse(image, channel))
        if pad is not None:
            sch.parallel(sch.fuse(*sch.get_loops(pad)[:2]))

    # Step 2: register tile (rows x cols) x V filters; the whole reduction runs on it.
    # An NCHW[x]c input reduces over channel blocks, lanes, then the kernel window.
    lego_loops = sch.get_loops(lego)
    reduction = sum(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(lego).iter_vars)
    outer = lego_loops[:-5 - reduction]
    split, filt, lrow, lcol, lanes = lego_loops[-5 - reduction:-reduction]
    if config.amx:
        _amx_tiles(sch, lego, config, outer, (split, filt, lrow, lcol, lanes),
                   lego_loops[-reduction:])
        if pad is not None:
            sch.vectorize(sch.get_loops(pad)[-1])
        sch.vectorize(lane[0] if lane else col)
        return
    filt_i = []
    # An int 1: no split, the loops the tuning logs made before this knob replay on.
    if not isinstance(config.reg_filters, int) or config.reg_filters > 1:
        filt, *filt_i = sch.split(filt, [None, config.reg_filters])
    row_o, row_i = sch.split(lrow, [None, config.reg_rows])
    col_o, col_i = sch.split(lcol, [None, config.reg_cols])
    reduce = lego_loops[-reduction:]           # channels (blocks, lanes), then the taps
    if config.channels_innermost:
        reduce = reduce[-2:] + reduce[:-2]
    # bf16: a pair of channels goes with the lanes into one vdpbf16ps.
    pair = [reduce.pop()] if bf16 else []
    sch.reorder(split, filt, row_o, col_o, *reduce, *filt_i, row_i, col_i, lanes, *pair)
    if config.channels_innermost:
        # Up to 4 channels a loop step: the loop's own instructions (about 5) then take a
        # few percent of the step, not a sixth (estimated on Neoverse N1: 94% -> 98.5%).
        channels = int(sch.get(reduce[-1]).extent)
        unroll = max(divisors(channels, CHANNELS_PER_STEP))
        if unroll > 1:
            sch.unroll(sch.split(reduce[-1], [None, unroll])[1])
    if not config.fuse_stages:
        sch.parallel(sch.fuse(*outer, split, filt))
    acc = sch.cache_write(lego, 0, "local")
    sch.reverse_compute_at(acc, col_o, preserve_unit_loops=True)
    for loop in filt_i:
        sch.unroll(loop)
    sch.unroll(row_i)
    sch.unroll(col_i)
    if not bf16:
        sch.vectorize(lanes)
    sch.vectorize(sch.get_loops(acc)[-1])
    # Vectorize first: after decompose_reduction the update block is no longer a reduction.
    init = sch.decompose_reduction(lego, reduce[0])
    if bf16:
        *tile, init_lanes = sch.get_loops(init)[-len(filt_i) - 3:]
        for loop in tile:
            sch.unroll(loop)
        sch.vectorize(init_lanes)
        tensorize_dot(sch, lanes, col_o)
    if pad is not None:
        sch.vectorize(sch.get_loops(pad)[-1])

    # Step 3: gather-sum, vectorized along the row (NCHW) or the channel lanes (NCHW[x]c).
    sch.vectorize(lane[0] if lane else col)


def _amx_tiles(sch: s_tir.Schedule, lego, config: LegoCpuConfig, outer, spatial, reduce
               ) -> None:
    """The maps in AMX tiles: for each split, filter block, row and ``reg_cols`` pixels, one
    micro-kernel call runs the whole reduction (``x86_amx.py``)."""
    split, filt, lrow, lcol, lanes = spatial
    col_o, col_i = sch.split(lcol, [None, config.reg_cols])
    # Reduction loops of extent 1 go above the tile, as the intrinsic's description has none.
    unit = [r for r in reduce if int(sch.get(r).extent) == 1]
    sch.reorder(split, filt, lrow, col_o, *unit, col_i, lanes,
                *[r for r in reduce if r not in unit])
    if not config.fuse_stages:
        sch.parallel(sch.fuse(*outer, split, filt))
    init = sch.decompose_reduction(lego, (unit or [col_i])[0])   # zero the tile, then one call
    sch.vectorize(sch.get_loops(init)[-1])
    tensorize_tile(sch, col_i, col_o, spec_of(sch.mod["main"]))


def apply_gather_schedule(sch: s_tir.Schedule) -> None:
    """The gather-sum stage alone (its Lego maps computed by oneDNN): parallel over images x
    output channels, vectorized along the row, as in the stage-by-stage schedule above."""
    image, channel, _row, col = sch.get_loops(sch.get_sblock(GATHER_BLOCK))
    sch.parallel(sch.fuse(image, channel))
    sch.vectorize(col)


def tunable_schedules(sch: s_tir.Schedule, spec: LegoConvSpec, target: Target
                      ) -> list[s_tir.Schedule]:
    """The MetaSchedule design spaces: the default schedule's body with sampled tile sizes,
    once with fused stages and once stage by stage."""
    simd = simd_profile(target)
    default = default_config(spec, num_cores(target), simd)
    if isinstance(default, WinogradConfig):
        return tunable_winograd_schedules(sch, spec, default, simd)
    if isinstance(default, FlatLegoConfig):
        return tunable_flat_schedules(sch, spec, default)
    if default.amx:      # the tile is fixed by the width: only the loop structure to choose
        spaces = [sch.copy() for _ in (True, False)]
        for space, fuse_stages in zip(spaces, (True, False)):
            apply_lego_schedule(space, replace(default, fuse_stages=fuse_stages))
        return spaces
    spaces = []
    for fuse_stages in (True, False):
        space = sch.copy()
        # A bf16 register tile must divide a task's rows: tensorize takes no predicate. (The
        # fp32 space keeps its candidates, so that the shipped records still replay.)
        rows = default.tile_rows if spec.bf16 and fuse_stages else spec.out_height
        config = LegoCpuConfig(
            tile_rows=default.tile_rows,
            reg_rows=sample_divisor(space, rows, simd.accumulators, default.reg_rows),
            reg_cols=sample_divisor(space, spec.out_width, 2 * simd.accumulators,
                                     default.reg_cols),
            fuse_stages=fuse_stages,
            reg_filters=sample_divisor(space, spec.lego_filters // spec.bank_block, 4,
                                       default.reg_filters),
            channels_innermost=default.channels_innermost)
        apply_lego_schedule(space, config)
        spaces.append(space)
    return spaces


class FusedLegoRule(ScheduleRule):
    """dlight rule: the default schedule of the fused Lego operator on CPUs (x86, ARM)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        spec = spec_of(func)
        if spec is not None:
            sch = s_tir.Schedule(func)
            apply_lego_schedule(sch, default_config(spec, num_cores(target), simd_profile(target)))
            return sch
        if spec_of(func, GATHER_SPEC_ATTR) is not None:
            sch = s_tir.Schedule(func)
            apply_gather_schedule(sch)
            return sch
        return None
