"""Default x86 schedule of the fused Lego convolution (AVX2 / AVX-512, fp32).

Loop structure (one parallel task per batch image x row tile):

    for (image, row_tile) in parallel:
        pad the input rows the tile needs                    # stays in L1/L2
        for split, filter_block, row, col_block:             # compute once
            acc[filter_block x col_vector] = 0               # registers
            for rc, ry, rx: acc += x_tile * bank (broadcast)
            store acc -> lego tile                           # o*m*rows*W floats, sized for L2
        for out_channel, row: gather-sum the lego tile + epilogue, vectorized over columns

The body is ``apply_lego_schedule(sch, config)``; ``default_config`` picks the knobs from the
shapes, and a tuner may pick others. One body, so tuned and default schedules cannot drift.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from ..fused_op import GATHER_BLOCK, LEGO_BLOCK, PAD_BLOCK, spec_of
from .tiling import largest_divisor_at_most, num_cores, vector_block, vector_lanes

# A Lego tile this size stays in a Zen 3 / Skylake L2 (512 KiB / 1 MiB) next to the padded input.
LEGO_TILE_BYTES = 128 * 1024
ACCUMULATOR_REGISTERS = 12   # of 16 AVX2 ymm registers; the rest hold input and broadcast bank


@dataclass(frozen=True)
class LegoX86Config:
    tile_rows: int        # output rows per parallel task
    filter_block: int     # Lego filters per register tile
    col_block: int        # output columns per register tile (vectorized)
    vector_lanes: int = 8


def default_config(batch: int, splits: int, lego_filters: int, out_height: int, out_width: int,
                   num_cores: int, vector_lanes: int = 8) -> LegoX86Config:
    row_bytes = splits * lego_filters * out_width * 4
    tile_rows = largest_divisor_at_most(out_height, LEGO_TILE_BYTES // row_bytes)
    # Keep at least two tasks per core so the threads stay balanced.
    while tile_rows > 1 and batch * (out_height // tile_rows) < 2 * num_cores:
        tile_rows = largest_divisor_at_most(out_height, tile_rows - 1)
    col_block = vector_block(out_width, vector_lanes)
    vectors = -(-col_block // vector_lanes)
    filter_block = largest_divisor_at_most(lego_filters, ACCUMULATOR_REGISTERS // vectors)
    return LegoX86Config(tile_rows, filter_block, col_block, vector_lanes)


def apply_lego_schedule(sch: s_tir.Schedule, config: LegoX86Config) -> None:
    """Schedule the fused Lego blocks of ``sch`` in place."""
    gather = sch.get_sblock(GATHER_BLOCK)
    lego = sch.get_sblock(LEGO_BLOCK)

    # Step 1: one parallel task per (image, row tile); both stages run inside it.
    image, channel, row, col = sch.get_loops(gather)
    row_tile, row_in = sch.split(row, [None, config.tile_rows])
    sch.reorder(image, row_tile, channel, row_in, col)
    task = sch.fuse(image, row_tile)
    sch.compute_at(lego, task)
    if _has_block(sch, PAD_BLOCK):
        sch.compute_at(sch.get_sblock(PAD_BLOCK), task)
        pad_loops = sch.get_loops(sch.get_sblock(PAD_BLOCK))
        sch.vectorize(pad_loops[-1])
    sch.parallel(task)

    # Step 2: register tile filters x columns, reduction outside, accumulators in registers.
    _task, split, filt, lrow, lcol, rc, ry, rx = sch.get_loops(lego)
    filt_o, filt_i = sch.split(filt, [None, config.filter_block])
    col_o, col_i = sch.split(lcol, [None, config.col_block])
    sch.reorder(split, filt_o, lrow, col_o, rc, ry, rx, filt_i, col_i)
    acc = sch.cache_write(lego, 0, "local")
    sch.reverse_compute_at(acc, col_o)
    sch.unroll(filt_i)
    sch.vectorize(col_i)
    sch.vectorize(sch.get_loops(acc)[-1])
    # Vectorize first: after decompose_reduction the update block is no longer a reduction.
    sch.decompose_reduction(lego, rc)

    # Step 3: gather-sum over the tile, vectorized along the row.
    sch.vectorize(col)


def _has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # noqa: BLE001 - TVM raises a generic ScheduleError
        return False


class FusedLegoRule(ScheduleRule):
    """dlight rule: the default schedule of the fused Lego operator on CPUs."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        spec = spec_of(func)
        if spec is None:
            return None
        sch = s_tir.Schedule(func)
        apply_lego_schedule(sch, default_config(
            spec.batch, spec.splits, spec.lego_filters, spec.out_height, spec.out_width,
            num_cores(target), vector_lanes(target)))
        return sch
