"""The CPU schedule of a fused Lego layer whose compute-once stage runs by Winograd
(``LegoConvSpec.winograd``, ``op/winograd.py``). Either every stage runs inside parallel
tasks of a few rows of tiles (the intermediate tensors stay in L2), or, when the
transformed bank is too big to read once per task, stage by stage, each parallel:

    pad the input                                  parallel over images x channels
    V = B^T d B for every split, channel and tile  parallel over images x splits x channels
    M = U V, a GEMM per (e, u)                     parallel over images x splits x (e, u) x filter blocks
        acc[filter blocks x rows x cols of tiles x V] += V (broadcast) * U (vector)
    L = A^T M A                                    parallel over images x splits x filter blocks
    gather-sum + epilogue                          parallel over images x output channels

The GEMM's register tile is the direct kernel's (``lego_cpu.py``), with tiles in place of
pixels; every (e, u) reads its own slice of the bank once.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from tvm import s_tir

from ..op.fused_op import GATHER_BLOCK, PAD_BLOCK, LegoConvSpec
from ..op.winograd import (GEMM_BLOCK, INPUT_BLOCK, INPUT_ROWS_BLOCK, MAPS_BLOCK,
                           OUTPUT_ROWS_BLOCK, PAD_TILES_BLOCK, tiles)
from ..support.tiling import divisors, has_block, largest_register_tile, sample_divisor
from .vector_unit import SimdProfile


# Measured on a 2-core Xeon (AVX-512, 2 MiB L2 per core), fused tasks against stage by
# stage: 128ch 56x56 F(4x4) (bank 0.6 MB) 0.93 / 1.31 ms, 256ch 28x28 F(2x2) (1.0 MB) 0.97 /
# 1.25, F(4x4) (2.4 MB) 1.10 / 0.97, 512ch 14x14 F(2x2) (4.2 MB) 1.35 / 1.02.
TASK_BYTES = 1024 * 1024
BANK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class WinogradConfig:
    """The knobs (ints for the default schedule, sampled when tuning)."""
    tile: int             # r of F(r x r, 3x3) (fixed by the spec)
    reg_filters: int      # GEMM register tile: filter blocks of V lanes x
    reg_rows: int         # rows of tiles x
    reg_cols: int         # tiles per row
    task_rows: int        # rows of tiles per parallel task, all stages in it; 0: stage by stage


def default_winograd_config(spec: LegoConvSpec, cores: int, simd: SimdProfile
                            ) -> WinogradConfig:
    s = spec
    rows, cols = tiles(s.out_height, s.winograd), tiles(s.out_width, s.winograd)
    # Fused tasks: a task's transformed input and GEMM output (o * alpha^2 * channels per
    # tile each) stay in L2, there are at least two tasks per core, and the transformed
    # bank, which every task reads whole, is at most BANK_BYTES; else stage by stage.
    alpha = s.winograd + 2
    tile_bytes = 4 * cols * s.splits * alpha * alpha * (s.split_channels + s.lego_filters)
    bank_bytes = 4 * alpha * alpha * s.lego_filters * s.split_channels
    task_rows = max([t for t in divisors(rows) if t * tile_bytes <= TASK_BYTES
                     and (s.batch or 1) * rows // t >= 2 * cores], default=0)
    if bank_bytes > BANK_BYTES:
        task_rows = 0
    f, r, c = largest_register_tile(s.lego_filters // s.bank_block, task_rows or rows, cols,
                                    min(simd.max_filter_blocks, 4), simd.accumulators)
    return WinogradConfig(s.winograd, f, r, c, task_rows)


def apply_winograd_schedule(sch: s_tir.Schedule, config: WinogradConfig) -> None:
    """Schedule the blocks of a Winograd Lego kernel in place (each stage where present)."""
    if has_block(sch, PAD_BLOCK) and has_block(sch, PAD_TILES_BLOCK):
        sch.compute_inline(sch.get_sblock(PAD_BLOCK))     # one pass over the input
    blocks = [b for b in (GATHER_BLOCK, MAPS_BLOCK, GEMM_BLOCK, INPUT_BLOCK, PAD_TILES_BLOCK,
                          PAD_BLOCK) if has_block(sch, b)]
    fused = bool(config.task_rows) and GATHER_BLOCK in blocks
    if fused:      # every stage inside the gather-sum's row tiles, consumers first
        gather = sch.get_sblock(GATHER_BLOCK)
        image, channel, row, *inner = sch.get_loops(gather)
        row_tile, row_in = sch.split(row, [None, config.task_rows * config.tile])
        sch.reorder(image, row_tile, channel, row_in, *inner)
        task = sch.fuse(image, row_tile)
        sch.parallel(task)
        for block in blocks[1:]:
            sch.compute_at(sch.get_sblock(block), task, preserve_unit_loops=True)
            if block == MAPS_BLOCK:
                sch.compute_at(sch.get_sblock(OUTPUT_ROWS_BLOCK), task, preserve_unit_loops=True)
            if block == INPUT_BLOCK:
                sch.compute_at(sch.get_sblock(INPUT_ROWS_BLOCK), task, preserve_unit_loops=True)
    for block in blocks:
        _STAGES[block](sch, sch.get_sblock(block), config, not fused)


def _parallel(sch, loops, parallel: bool) -> None:
    if parallel:
        sch.parallel(sch.fuse(*loops))


def _pad(sch, pad, _config, parallel: bool) -> None:
    loops = sch.get_loops(pad)
    _parallel(sch, loops[-4:-2], parallel)
    sch.vectorize(loops[-1])


def _pad_tiles(sch, block, _config, parallel: bool) -> None:
    n, c, y, p, x = sch.get_loops(block)[-5:]
    sch.reorder(n, c, y, x, p)
    _parallel(sch, [n, c], parallel)
    sch.unroll(p)


def _input_transform(sch, inp, _config, parallel: bool) -> None:
    # One row of tiles at a time, rows then columns, on vectors of tiles.
    n, i, e, u, c, ty, tx = sch.get_loops(inp)[-7:]
    sch.reorder(n, i, c, ty, e, u, tx)
    _parallel(sch, [n, i, c], parallel)
    rows = sch.get_sblock(INPUT_ROWS_BLOCK)
    sch.compute_at(rows, ty, preserve_unit_loops=True)
    sch.set_scope(rows, 0, "local")
    row_e, row_b, row_x = sch.get_loops(rows)[-3:]
    for loop in (row_e, row_b, e, u):
        sch.unroll(loop)
    sch.vectorize(row_x)
    sch.vectorize(tx)


def _gemm(sch, gemm, config, parallel: bool) -> None:
    # The direct kernel's register tile.
    n, i, e, u, ko, ty, tx, ki, rc = sch.get_loops(gemm)[-9:]
    ko_o, ko_i = sch.split(ko, [None, config.reg_filters])
    ty_o, ty_i = sch.split(ty, [None, config.reg_rows])
    tx_o, tx_i = sch.split(tx, [None, config.reg_cols])
    sch.reorder(n, i, e, u, ko_o, ty_o, tx_o, rc, ko_i, ty_i, tx_i, ki)
    _parallel(sch, [n, i, e, u, ko_o], parallel)
    acc = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(acc, tx_o, preserve_unit_loops=True)
    for loop in (ko_i, ty_i, tx_i):
        sch.unroll(loop)
    sch.vectorize(ki)
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.decompose_reduction(gemm, rc)


def _output_transform(sch, maps, config, parallel: bool) -> None:
    # One tile's outputs unrolled, rows then columns, vectors of V filters.
    tile = config.tile
    n, i, ko, h, w, ki = sch.get_loops(maps)[-6:]
    h_o, h_i = sch.split(h, [None, tile])
    w_o, w_i = sch.split(w, [None, tile])
    sch.reorder(n, i, ko, h_o, w_o, h_i, w_i, ki)
    _parallel(sch, [n, i, ko], parallel)
    rows = sch.get_sblock(OUTPUT_ROWS_BLOCK)
    sch.compute_at(rows, w_o, preserve_unit_loops=True)
    sch.set_scope(rows, 0, "local")
    row_h, row_u, row_k = sch.get_loops(rows)[-3:]
    sch.unroll(row_h)
    sch.unroll(row_u)
    sch.vectorize(row_k)
    sch.unroll(h_i)
    sch.unroll(w_i)
    sch.vectorize(ki)


def _gather(sch, gather, _config, parallel: bool) -> None:
    loops = sch.get_loops(gather)
    if parallel:
        image, channel, _row, col, *lane = loops   # lane: NCHW[x]c output
        sch.parallel(sch.fuse(image, channel))
    sch.vectorize(loops[-1])


_STAGES = {PAD_BLOCK: _pad, PAD_TILES_BLOCK: _pad_tiles, INPUT_BLOCK: _input_transform,
           GEMM_BLOCK: _gemm, MAPS_BLOCK: _output_transform, GATHER_BLOCK: _gather}


def tunable_winograd_schedules(sch: s_tir.Schedule, spec: LegoConvSpec,
                               default: WinogradConfig, simd: SimdProfile
                               ) -> list[s_tir.Schedule]:
    """The MetaSchedule design space: the default body with a sampled register tile."""
    s = spec
    space = sch.copy()
    apply_winograd_schedule(space, replace(
        default,
        reg_filters=sample_divisor(space, s.lego_filters // s.bank_block, 4, default.reg_filters),
        reg_rows=sample_divisor(space, tiles(s.out_height, s.winograd), simd.accumulators,
                                default.reg_rows),
        reg_cols=sample_divisor(space, tiles(s.out_width, s.winograd), simd.accumulators,
                                default.reg_cols)))
    return [space]
