"""CUDA schedule of the fused Lego convolution (fp32), shared with the tunable rule.

Fused stages (the default wherever the tile fits in shared memory):

    blockIdx.x  = (image, row tile, column tile)            # one output tile per block
      shared    L[o, m/V, tile_h, tile_w, V]                # compute once: the Lego tile
        threadIdx.x over (split, filter block, row, col/P)  # each thread: V filters of P
          acc[P, V] in registers; for rc, ry, rx:           # neighbouring pixels (P = 1 by
            acc[p, :] += x[p] * bank[.., 0:V]               # default; tuning samples 1-4)
      __syncthreads()
      threadIdx.x over (out channel, row, col): gather L + epilogue -> y    # coalesced on col

Neighbouring threads take neighbouring output columns, so input loads, Lego tile accesses
and output stores are coalesced; all threads of a warp mostly share one filter block, so
bank loads are broadcasts. Padding is inlined into the loads (a predicate).

When the Lego tile of even a small output tile does not fit (deep layers: ``o*m`` large,
feature maps small), the stages run one after the other: the Lego maps go to global memory
(a workspace), each stage with its own grid. The Lego stage is then tiled like a direct
conv of ``batch*o`` images with ``m`` filters:

    blockIdx.x  = (image, split, filter-block tile, row tile, column tile)
      threadIdx.x over (filter block, row, col/P): acc[P, V] in registers
        for each chunk of input channels:
          shared <- the chunk's input window (padded on the way) and bank slice
          __syncthreads(); accumulate from shared; __syncthreads()

``default_config`` picks the tiles from the shapes and the GPU (its shared memory and
streaming multiprocessors); MetaSchedule samples others through ``tunable_schedules``, the
same bodies.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from ..op.fused_op import GATHER_BLOCK, LEGO_BLOCK, PAD_BLOCK, LegoConvSpec, spec_of
from ..support.tiling import divisors, has_block, sample_choice

# Lego filters per packed bank block: one float4 bank load feeds V accumulators.
BANK_BLOCK = 4
# Streaming multiprocessors of the presets' GPUs by architecture (for the grid size).
SMS_BY_ARCH = {"sm_80": 108, "sm_86": 84, "sm_89": 58, "sm_90": 132, "sm_90a": 132}


@dataclass(frozen=True)
class LegoCudaConfig:
    fuse_stages: bool   # Lego tile in shared memory per block (else stage by stage)
    tile_h: int         # output rows per block (fused stages, or the tiled Lego stage)
    tile_w: int         # output columns per block (fused stages, or the tiled Lego stage)
    threads: int        # threads per block (tiled Lego stage: filter_blocks x tile / pixels;
                        # None while tuning it, when MetaSchedule derives it)
    # Neighbouring output columns one thread computes the Lego maps of: BANK_BLOCK x pixels
    # accumulators, each bank load used pixels times. More work per thread, fewer threads.
    pixels: int = 1
    # Stage by stage only: tile the Lego stage like a direct conv (a block computes
    # filter_blocks x BANK_BLOCK maps of a tile_h x tile_w tile, staging reduce_chunk input
    # channels of the input window and of the bank through shared memory at a time).
    # Untiled, each thread reads its inputs and bank values from global memory.
    tiled: bool = False
    filter_blocks: int = 1
    reduce_chunk: int = 1


def shared_bytes(spec: LegoConvSpec, tile_h: int, tile_w: int) -> int:
    return spec.splits * spec.lego_filters * tile_h * tile_w * 4


def _shared_budget(target: Target) -> int:
    # Half the per-block shared memory: two blocks per SM can hide each other's latency.
    return int(target.attrs.get("max_shared_memory_per_block", 49152)) // 2


def default_config(spec: LegoConvSpec, target: Target, pixels: int = 1) -> LegoCudaConfig:
    """The default schedule (``pixels`` per thread; 1 unless asked: no GPU data chose more)."""
    s = spec
    budget = _shared_budget(target)
    sms = SMS_BY_ARCH.get(str(target.attrs.get("arch", "")), 108)
    tiles = [(th, tw) for th in divisors(s.out_height) for tw in divisors(s.out_width)
             if tw % pixels == 0 and shared_bytes(s, th, tw) <= budget]
    # A batch chosen at call time is planned for as one image.
    blocks = {t: (s.batch or 1) * (s.out_height // t[0]) * (s.out_width // t[1]) for t in tiles}
    # A tile worth sharing holds at least 4 pixels; prefer enough blocks for every SM, then
    # the largest tile (more reuse of each loaded input), then wide rows (coalescing).
    worth = [t for t in tiles if t[0] * t[1] >= min(4, s.out_height * s.out_width)]
    if not worth:
        return tiled_config(spec, target, pixels)
    tile = max(worth, key=lambda t: (min(blocks[t], sms), t[0] * t[1], t[1]))
    area = tile[0] * tile[1]
    threads = 256 if area * s.out_channels >= 256 * 4 else 128
    # No more threads than the Lego stage has work items: with several pixels per thread a
    # block's Lego tile has fewer of them, and the rest of the threads would idle.
    lego_items = s.splits * (s.lego_filters // s.bank_block) * area // pixels
    while threads > 32 and threads // 2 >= lego_items:
        threads //= 2
    return LegoCudaConfig(True, tile[0], tile[1], threads, pixels)


def tiled_shared_bytes(spec: LegoConvSpec, config: LegoCudaConfig) -> int:
    """Shared memory of the tiled Lego stage: the input window and the bank chunk."""
    s, c = spec, config
    rows = (c.tile_h - 1) * s.stride[0] + s.kernel[0]
    cols = (c.tile_w - 1) * s.stride[1] + s.kernel[1]
    window = c.reduce_chunk * rows * cols
    bank = c.filter_blocks * s.bank_block * c.reduce_chunk * s.kernel[0] * s.kernel[1]
    return (window + bank) * 4


def tiled_config(spec: LegoConvSpec, target: Target, pixels: int = 1) -> LegoCudaConfig:
    """Stage by stage with the Lego stage tiled: the widest tile (up to 16 columns) that
    ``pixels`` divides, the most threads (at most 256, whole warps first) from filter blocks
    x tile rows, and the largest reduction chunk (up to 8 channels under a window, 32 for
    1x1) that fits half the shared memory."""
    s = spec
    budget = _shared_budget(target)
    tile_w = max(d for d in divisors(s.out_width, 16) if d % pixels == 0)
    chunks = divisors(s.split_channels, 8 if s.kernel[0] * s.kernel[1] > 1 else 32)
    candidates = []
    for blocks in divisors(s.lego_filters // s.bank_block, 32):
        for tile_h in divisors(s.out_height):
            threads = blocks * tile_h * tile_w // pixels
            config = LegoCudaConfig(False, tile_h, tile_w, threads, pixels, True, blocks,
                                    chunks[0])
            if 32 <= threads <= 256 and tiled_shared_bytes(s, config) <= budget:
                candidates.append(config)
    if not candidates:
        return staged_config(pixels)
    best = max(candidates, key=lambda c: (c.threads % 32 == 0, c.threads, c.tile_h))
    return max((replace(best, reduce_chunk=c) for c in chunks),
               key=lambda c: (tiled_shared_bytes(s, c) <= budget, c.reduce_chunk))


def staged_config(pixels: int = 1) -> LegoCudaConfig:
    """Stage by stage, the Lego stage untiled (each thread reads global memory)."""
    return LegoCudaConfig(False, 1, 1, 256, pixels)


def schedule_variants(spec: LegoConvSpec, target: Target, pixels=(1, 2, 4)
                      ) -> list[LegoCudaConfig]:
    """For each of ``pixels`` that divides the output width: the default config, stage by
    stage and stage by stage tiled (without repeats), the designs to compare side by side."""
    variants = []
    for count in (p for p in pixels if spec.out_width % p == 0):
        for config in (default_config(spec, target, count), staged_config(count),
                       tiled_config(spec, target, count)):
            if config not in variants:
                variants.append(config)
    return variants


def apply_lego_schedule(sch: s_tir.Schedule, config: LegoCudaConfig) -> None:
    """Schedule the fused Lego blocks of ``sch`` in place for CUDA."""
    gather = sch.get_sblock(GATHER_BLOCK)
    lego = sch.get_sblock(LEGO_BLOCK)
    image, channel, row, col = sch.get_loops(gather)
    if config.tiled:
        _bind_flat(sch, [image, channel, row, col], 256)     # the gather stage's own grid
        _tiled_lego_stage(sch, lego, config)
        return
    if config.fuse_stages:
        row_tile, row_in = sch.split(row, [None, config.tile_h])
        col_tile, col_in = sch.split(col, [None, config.tile_w])
        sch.reorder(image, row_tile, col_tile, channel, row_in, col_in)
        block = sch.fuse(image, row_tile, col_tile)
        sch.bind(block, "blockIdx.x")
        _, thread = sch.split(sch.fuse(channel, row_in, col_in), [None, config.threads])
        sch.bind(thread, "threadIdx.x")
        sch.compute_at(lego, block, preserve_unit_loops=True)
        sch.set_scope(lego, 0, "shared")
        # (image, split, filter block, row, col, lane) + rc, ry, rx
        lego_items, pixel = _split_pixels(sch, sch.get_loops(lego)[1:], config.pixels)
        _, lego_thread = sch.split(lego_items, [None, config.threads])
        sch.bind(lego_thread, "threadIdx.x")
    else:
        lego_items, pixel = _split_pixels(sch, sch.get_loops(lego), config.pixels)
        lego_block, lego_thread = sch.split(lego_items, [None, config.threads])
        sch.bind(lego_block, "blockIdx.x")
        sch.bind(lego_thread, "threadIdx.x")
        _bind_flat(sch, [image, channel, row, col], config.threads)
    # Per thread: V x pixels accumulators in registers over the whole reduction; each input
    # value (padded on the fly, in a register) feeds V FMAs, each bank value pixels FMAs.
    lane, rc, ry, rx = sch.get_loops(lego)[-4:]
    sch.reorder(rc, ry, rx, pixel, lane)
    if has_block(sch, PAD_BLOCK):
        pad = sch.get_sblock(PAD_BLOCK)
        sch.compute_at(pad, rx, preserve_unit_loops=True)
        sch.set_scope(pad, 0, "local")
    else:
        sch.compute_at(sch.cache_read(lego, 0, "local"), rx, preserve_unit_loops=True)
    acc = sch.cache_write(lego, 0, "local")
    sch.reverse_compute_at(acc, lego_thread, preserve_unit_loops=True)
    sch.unroll(pixel)
    sch.unroll(lane)
    sch.decompose_reduction(lego, rc)


def _bind_flat(sch: s_tir.Schedule, loops, threads: int) -> None:
    block, thread = sch.split(sch.fuse(*loops), [None, threads])
    sch.bind(block, "blockIdx.x")
    sch.bind(thread, "threadIdx.x")


def _tiled_lego_stage(sch: s_tir.Schedule, lego, config: LegoCudaConfig) -> None:
    """The Lego stage alone as a direct conv of ``batch*o`` images with ``m`` filters: per
    block a (filter blocks x tile) output tile; per reduction chunk the block stages the
    input window (padded on the way) and the bank chunk in shared memory, each thread
    loading a share; each thread keeps BANK_BLOCK x pixels accumulators of neighbouring
    columns in registers. The thread's pixels are contiguous: with strided ones TVM would
    write back the whole span from registers (other threads' pixels included)."""
    c = config
    image, split, filter_block, row, col, lane, rc, ry, rx = sch.get_loops(lego)
    filter_out, filter_in = sch.split(filter_block, [None, c.filter_blocks])
    row_out, row_in = sch.split(row, [None, c.tile_h])
    col_out, col_in = sch.split(col, [None, c.tile_w])
    col_thread, pixel = sch.split(col_in, [None, c.pixels])
    rc_out, rc_in = sch.split(rc, [None, c.reduce_chunk])
    sch.reorder(image, split, filter_out, row_out, col_out, filter_in, row_in, col_thread,
                rc_out, rc_in, ry, rx, pixel, lane)
    sch.bind(sch.fuse(image, split, filter_out, row_out, col_out), "blockIdx.x")
    thread = sch.fuse(filter_in, row_in, col_thread)
    sch.bind(thread, "threadIdx.x")
    acc = sch.cache_write(lego, 0, "local")
    sch.reverse_compute_at(acc, thread, preserve_unit_loops=True)
    if has_block(sch, PAD_BLOCK):
        window = sch.get_sblock(PAD_BLOCK)
        sch.set_scope(window, 0, "shared")
    else:
        window = sch.cache_read(lego, 0, "shared")
    bank = sch.cache_read(lego, 1, "shared")
    for stage in (window, bank):
        sch.compute_at(stage, rc_out, preserve_unit_loops=True)
        # Loops above the stage: block, thread, rc_out.
        loads = sch.fuse(*sch.get_loops(stage)[3:])
        if c.threads is None:
            # Tuning: the thread count is a product of samples, so MetaSchedule's rewrite
            # splits the loads (the block's last loop) by the last threadIdx.x extent bound.
            sch.annotate(stage, "meta_schedule.cooperative_fetch",
                         sch.sample_categorical([1], [1.0]))
        else:
            _, share = sch.split(loads, [None, c.threads])
            sch.bind(share, "threadIdx.x")
    sch.unroll(pixel)
    sch.unroll(lane)
    sch.decompose_reduction(lego, rc_out)


def _split_pixels(sch: s_tir.Schedule, loops, pixels: int):
    """(the fused loop over a thread's work items, the loop over its pixels) from the Lego
    block's (image, split, filter block, row, col, ...) loops."""
    image, split, filter_block, row, col = loops[:5]
    col, pixel = sch.split(col, [None, pixels])
    return sch.fuse(image, split, filter_block, row, col), pixel


def tunable_schedules(sch: s_tir.Schedule, spec: LegoConvSpec, target: Target
                      ) -> list[s_tir.Schedule]:
    """The MetaSchedule design spaces: the default schedule's body with sampled output tile,
    thread count and pixels per thread, once with fused stages, once stage by stage and once
    stage by stage with the Lego stage tiled (also sampling its filter blocks and reduction
    chunk; its threads follow from the tile, and MetaSchedule's cooperative-fetch rewrite
    spreads the shared-memory loads over them). Tiles that overflow shared memory or the
    thread limit are rejected by MetaSchedule's GPU-code verification."""
    default = default_config(spec, target)
    tiled = tiled_config(spec, target)
    spaces = []
    for fuse_stages in (True, False):
        space = sch.copy()
        fused = fuse_stages and default.fuse_stages
        config = LegoCudaConfig(
            fuse_stages=fuse_stages,
            tile_h=sample_choice(space, divisors(spec.out_height), default.tile_h) if fused else 1,
            tile_w=sample_choice(space, divisors(spec.out_width), default.tile_w) if fused else 1,
            threads=sample_choice(space, [64, 128, 256, 512], default.threads),
            # A tile width that pixels do not divide leaves a tail that a predicate guards.
            pixels=sample_choice(space, divisors(spec.out_width, 4), default.pixels))
        apply_lego_schedule(space, config)
        spaces.append(space)
    space = sch.copy()
    apply_lego_schedule(space, LegoCudaConfig(
        fuse_stages=False,
        tile_h=sample_choice(space, divisors(spec.out_height, 16), tiled.tile_h),
        tile_w=sample_choice(space, divisors(spec.out_width, 32), tiled.tile_w),
        threads=None,
        pixels=sample_choice(space, divisors(spec.out_width, 4), tiled.pixels),
        tiled=True,
        filter_blocks=sample_choice(space, divisors(spec.lego_filters // spec.bank_block, 32),
                                    tiled.filter_blocks),
        reduce_chunk=sample_choice(space, divisors(spec.split_channels, 64),
                                   tiled.reduce_chunk)))
    spaces.append(space)
    return spaces


def narrow_indices(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """The fused operator indexes with int64 (FuseTIR needs it on CPUs); 64-bit index
    arithmetic is slow on GPUs, so a scheduled fused kernel whose buffers all have fewer
    than 2**31 elements gets int32 indices."""
    s = spec_of(func)
    if s.batch is None:
        return func                 # any batch: int32 might overflow
    largest = max(s.batch * s.in_channels * s.height * s.width,
                  s.batch * max(s.out_channels, s.splits * s.lego_filters)
                  * s.out_height * s.out_width)
    if largest >= 2 ** 31:
        return func
    return tirx.transform.ForceNarrowIndexToInt32()(tvm.IRModule({"main": func}))["main"]


# A GPU thread or block loop in TVMScript, e.g. T.thread_binding(T.int64(256), thread="threadIdx.x"
_THREAD_LOOP = re.compile(r'T\.thread_binding\(((?:T\.int64\()?\d+\)?), thread="\w+\.[xyz]"')


def serial_threads(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every GPU thread and block loop made an ordinary serial loop: a CUDA
    schedule that builds and runs on the CPU, computing what the GPU should (shared and
    local buffers become ordinary ones; nothing runs concurrently, so races cannot show)."""
    text = _THREAD_LOOP.sub(r"T.serial(\1", func.script())
    if "thread_binding" in text:
        raise ValueError("a thread binding this rewrite does not recognise is left")
    return tvm.script.from_source(text)


class FusedLegoCudaRule(ScheduleRule):
    """dlight rule: the default CUDA schedule of the fused Lego operator."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "cuda":
            return None
        spec = spec_of(func)
        if spec is None:
            return None
        sch = s_tir.Schedule(func)
        apply_lego_schedule(sch, default_config(spec, target))
        return sch
