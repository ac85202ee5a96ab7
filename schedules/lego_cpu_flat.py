"""The CPU schedule of fused Lego 1x1 layers whose maps are stored pixels innermost
(``LegoConvSpec.flat_pixels``: ``[batch, o, m, H*W]``).

With filter lanes innermost (``lego_cpu.py``), the gather-sum along an output row reads the
maps with a stride of V floats and builds each vector element by element; in a 1x1 layer,
whose gather-sum is large next to its short reduction, that took 45-57% of the time (AMD
EPYC and Intel Xeon, AVX-512). Here the vectors run along the flattened pixels of a 1x1
stride-1 layer instead (``H*W`` is contiguous in NCHW), so both stages load and store whole
vectors:

    compute once: acc[filters x vectors of V pixels] += bank[k, c] (broadcast) * x[c, pixels]
    gather-sum:   y[j, pixels] = epilogue(bias[j] + sum_i coef[i, j] * L[i, index[i, j], pixels])

Tasks are row tiles (stages fused, the Lego tile in L2) or, for small maps, each stage on
its own, parallel over its channels, as in ``lego_cpu.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from tvm import s_tir

from ..op.bf16 import PACK_BLOCK
from ..op.fused_op import GATHER_BLOCK, LEGO_BLOCK, LegoConvSpec, spec_of
from ..support.tiling import divisors, has_block, sample_choice, sample_divisor
from .vector_unit import SimdProfile
from .x86_amx import LANES as AMX_TILE
from .x86_amx_flat import tensorize_tiles, tile_pixels

# Measured on the ResNet-50 1x1 layers (2-core Intel Xeon, AVX-512, 2026-11-30): fused
# tasks of 4 rows of 56 (224 pixels) beat stage by stage by 10-30%; at 28x28 (tiles of 112
# pixels) stage by stage won by 5-15%. A register tile of 4 filters x 2 vectors was the best
# or within 5% of it on all four.
MIN_TILE_PIXELS = 200
TASKS_PER_CORE = 4
# bf16 on AMX, where the maps cost little to compute: fused row tiles of any size ran 1.3-2.2x
# faster than stage by stage (lego_resnet50's 1x1 layers alone, 2 threads: 128->512 at 28x28
# in 7 tasks of 4 rows 0.11 against 0.24 ms; 1024->256 at 14x14 in 7 tasks of 2 rows 0.08
# against 0.14 ms); at 56x56, tasks of 4 rows (14 tasks) beat 8 rows (7) by 25%.
AMX_TASKS_PER_CORE = 3
# ... while every task can reread the bf16 bank from L2 (a Xeon core's; lego_cpu.py
# measured why).
AMX_FUSED_MAX_BANK_BYTES = 2 * 1024 * 1024


def amx_bank_fits_l2(spec: LegoConvSpec) -> bool:
    """Whether fused row tasks on AMX can each reread the kernel's bf16 bank from L2."""
    s = spec
    return s.lego_filters * s.split_channels * s.kernel[0] * s.kernel[1] * 2 <= \
        AMX_FUSED_MAX_BANK_BYTES
REGISTER_TILE = (4, 2)       # filters, vectors of V pixels


@dataclass(frozen=True)
class FlatLegoConfig:
    """The knobs (ints for the default schedule, sampled variables when tuning)."""
    tile_rows: int        # output rows per parallel task (fused stages)
    reg_filters: int      # register tile: filters x vectors of ``lanes`` pixels
    reg_vectors: int
    fuse_stages: bool
    lanes: int            # fp32 lanes of the vector unit
    # bf16 on AMX (x86_amx_flat.py): reg_filters = 16F filters x reg_vectors = Q tiles of
    # tile_pixels, the whole reduction in one micro-kernel call.
    amx: bool = False
    tile_pixels: int = 0


def default_flat_config(spec: LegoConvSpec, cores: int, simd: SimdProfile) -> FlatLegoConfig:
    s = spec
    tile_limit = 2 * simd.lego_tile_bytes     # maps of o*m filters, all fp32
    rows = [t for t in divisors(s.height)
            if (t * s.width) % simd.lanes == 0 and t * s.width >= MIN_TILE_PIXELS
            and t * s.width * s.splits * s.lego_filters * 4 <= tile_limit
            and (s.batch or 1) * (s.height // t) >= TASKS_PER_CORE * cores]
    filters, vectors = REGISTER_TILE
    return FlatLegoConfig(tile_rows=max(rows or [s.height]),
                          reg_filters=max(divisors(s.lego_filters, filters)),
                          reg_vectors=vectors, fuse_stages=bool(rows), lanes=simd.lanes)


def default_amx_config(spec: LegoConvSpec, cores: int, simd: SimdProfile) -> FlatLegoConfig:
    """bf16 on AMX: row tiles as above whose pixels are whole tiles (else stage by stage),
    2 x 2 accumulator tiles where they divide."""
    s = spec
    if not simd.amx_bf16:
        raise ValueError(f"a bf16 kernel with flat maps computes them on AMX; {simd.name} "
                         "has no AMX")
    tile_limit = 2 * simd.lego_tile_bytes
    pixels = s.out_height * s.out_width
    tile = tile_pixels(s)
    rows = [t for t in divisors(s.out_height)
            if amx_bank_fits_l2(s) and (t * s.out_width) % tile == 0
            and t * s.out_width * s.splits * s.lego_filters * 4 <= tile_limit
            and (s.batch or 1) * (s.out_height // t) >= AMX_TASKS_PER_CORE * cores]
    tile_rows = max(rows or [s.out_height])
    task_pixels = tile_rows * s.out_width if rows else pixels
    return FlatLegoConfig(
        tile_rows=tile_rows, reg_filters=AMX_TILE * (2 if s.lego_filters % (2 * AMX_TILE) == 0 else 1),
        reg_vectors=2 if task_pixels % (2 * tile) == 0 else 1, fuse_stages=bool(rows),
        lanes=simd.lanes, amx=True, tile_pixels=tile)


def apply_flat_schedule(sch: s_tir.Schedule, config: FlatLegoConfig) -> None:
    """Schedule the fused blocks of a ``flat_pixels`` Lego kernel in place."""
    gather = sch.get_sblock(GATHER_BLOCK)
    lego = sch.get_sblock(LEGO_BLOCK)
    pack = sch.get_sblock(PACK_BLOCK) if has_block(sch, PACK_BLOCK) else None   # bf16
    image, channel, row, col = sch.get_loops(gather)
    width = int(sch.get(col).extent)
    if config.fuse_stages:
        row_tile, row_in = sch.split(row, [None, config.tile_rows])
        sch.reorder(image, row_tile, channel, row_in, col)
        task = sch.fuse(image, row_tile)
        sch.parallel(task)
        sch.compute_at(lego, task, preserve_unit_loops=True)
        if pack is not None:
            sch.compute_at(pack, task, preserve_unit_loops=True)
        pixels = (row_in, col)
    else:
        sch.parallel(sch.fuse(image, channel))
        if pack is not None:
            sch.parallel(sch.fuse(*sch.get_loops(pack)[:3]))
        pixels = (row, col)
    # Whole vectors along the flattened rows where they divide them, else along a row (a
    # tail vector under a predicate left the gather-sum of a 14x14 layer 2x slower).
    extent = int(sch.get(pixels[0]).extent) * int(sch.get(pixels[1]).extent)
    if extent % config.lanes:
        sch.vectorize(pixels[1])
    else:
        sch.vectorize(sch.split(sch.fuse(*pixels), [None, config.lanes])[1])
    if pack is not None:     # a tile's pixels, a pair of channels in each
        _vectorize_pack(sch, pack, config.tile_pixels, width)
    if config.amx:
        _amx_tiles(sch, lego, config)
        return

    # Compute once: the register tile runs the whole reduction over a split's channels.
    # A vector count that does not divide the pixels leaves a predicate on whole vectors.
    lego_image, split, filt, pix, reduction = sch.get_loops(lego)[-5:]
    filt_o, filt_i = sch.split(filt, [None, config.reg_filters])
    pix_o, pix_v, pix_l = sch.split(pix, [None, config.reg_vectors, config.lanes])
    sch.reorder(split, filt_o, pix_o, reduction, filt_i, pix_v, pix_l)
    if not config.fuse_stages:
        sch.parallel(sch.fuse(lego_image, split, filt_o))
    acc = sch.cache_write(lego, 0, "local")
    sch.reverse_compute_at(acc, pix_o, preserve_unit_loops=True)
    sch.unroll(filt_i)
    sch.unroll(pix_v)
    sch.vectorize(pix_l)
    sch.vectorize(sch.split(sch.get_loops(acc)[-1], [None, config.lanes])[1])
    sch.decompose_reduction(lego, reduction)


def _vectorize_pack(sch: s_tir.Schedule, pack, tile_pixels: int, width: int) -> None:
    """The packing of the bf16 input of a strided layer in vectors of one output row
    (``width`` pixels) where its pixels are whole rows, else in vectors of a tile's pixels.

    A strided layer reads every other input pixel, which TVM loads lane by lane: in vectors of
    a tile, each lane's address came from a vector division of the flat pixel by the width
    (measured: ~35% of a 256->512 1x1 stride-2 layer at 56x56). Along a row the addresses are
    a loop counter plus constants: that layer alone ran 0.37 -> 0.29 ms, 512->1024 at 28x28
    0.34 -> 0.31, 1024->2048 at 14x14 0.46 -> 0.41 (2-core Xeon with AMX, default
    schedules)."""
    pixels = sch.get_loops(pack)[-1]
    extent = int(sch.get(pixels).extent)
    spec = spec_of(sch.mod["main"])
    if spec is not None and spec.stride != (1, 1) and extent % width == 0:
        sch.vectorize(sch.split(pixels, [extent // width, width])[1])
    else:
        sch.vectorize(sch.split(pixels, [None, tile_pixels])[1])


def _amx_tiles(sch: s_tir.Schedule, lego, config: FlatLegoConfig) -> None:
    """The maps in AMX tiles: for each split, 16F filters and NQ pixels, one micro-kernel
    call from zero tiles over the whole reduction (``x86_amx_flat.py``)."""
    loops = sch.get_loops(lego)
    image, split, filt, pix, *reduce = loops[-6:]
    filt_o, filt_i = sch.split(filt, [None, config.reg_filters])
    pix_o, pix_i = sch.split(pix, [None, config.tile_pixels * config.reg_vectors])
    # A reduction loop of extent 1 (32 channels a split) goes above the tile: the
    # intrinsic's description has none.
    unit = [r for r in reduce if int(sch.get(r).extent) == 1]
    sch.reorder(split, filt_o, pix_o, *unit, filt_i, pix_i, *[r for r in reduce if r not in unit])
    if not config.fuse_stages:
        sch.parallel(sch.fuse(*loops[:-6], image, split, filt_o))
    blocks = int(sch.get(reduce[0]).extent)
    tensorize_tiles(sch, filt_i, pix_o, config.reg_filters // AMX_TILE, config.reg_vectors,
                    config.tile_pixels, blocks)
    # The micro-kernel starts from zero tiles, but the block keeps its zero init (tensorize
    # replaces the body only): stores before the pixel loop (LLVM makes them memsets).
    sch.decompose_reduction(sch.get_sblock(f"{LEGO_BLOCK}_o"), pix_o)


def tunable_flat_schedules(sch: s_tir.Schedule, spec: LegoConvSpec, default: FlatLegoConfig
                           ) -> list[s_tir.Schedule]:
    """MetaSchedule design spaces: the default body with a sampled register tile, with fused
    stages (where the default has a row tile for them) and stage by stage."""
    spaces = []
    for fuse_stages in sorted({default.fuse_stages, False}, reverse=True):
        space = sch.copy()
        config = replace(default, fuse_stages=fuse_stages)
        if not default.amx:     # on AMX the tiles are fixed: only the loop structure varies
            config = replace(
                config,
                reg_filters=sample_divisor(space, spec.lego_filters, 16, default.reg_filters),
                reg_vectors=sample_choice(space, [1, 2, 3, 4], default.reg_vectors))
        apply_flat_schedule(space, config)
        spaces.append(space)
    return spaces
