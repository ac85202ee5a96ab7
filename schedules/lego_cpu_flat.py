"""The CPU schedule of fused Lego layers whose maps are stored pixels innermost
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

In bf16 the maps are computed with ``vdpbf16ps`` on vectors of 16 pixels, each lane a pair of
channels (``x86_bf16.INTRIN_PIXELS``), or on AMX (``x86_amx_flat.py``) in tiles of 16
filters, and kxk stride-1 layers have flat maps too (``_taps_schedule``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from tvm import s_tir, tirx

from ..op.bf16 import PACK_BLOCK, flat_layout, flat_pixels
from ..op.fused_op import GATHER_BLOCK, LEGO_BLOCK, LegoConvSpec, spec_of
from ..support.tiling import divisors, has_block, sample_choice, sample_divisor
from .vector_unit import SimdProfile
from .x86_amx import LANES as AMX_TILE
from .x86_amx_flat import taps, tensorize_tiles, tile_pixels
from .x86_bf16 import INTRIN_PIXELS, LANES as DPBF16PS_LANES, tensorize_dot

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
    if s.bf16 and dpbf16ps_flat_unsupported(s):
        raise ValueError(f"a bf16 kernel with flat maps: {dpbf16ps_flat_unsupported(s)}")
    height, width = s.out_height, s.out_width
    tile_limit = 2 * simd.lego_tile_bytes     # maps of o*m filters, all fp32
    if taps(s):
        # kxk (bf16): the row tasks are the maps' layout (bf16.flat_layout); fused from one
        # task a core, as on AMX.
        rows = [flat_layout(s)[1]]
        fuse_stages = (s.batch or 1) * (height // rows[0]) >= cores
    else:
        rows = [t for t in divisors(height)
                if (t * width) % simd.lanes == 0 and t * width >= MIN_TILE_PIXELS
                and t * width * s.splits * s.lego_filters * 4 <= tile_limit
                and (s.batch or 1) * (height // t) >= TASKS_PER_CORE * cores]
        fuse_stages = bool(rows)
    config = FlatLegoConfig(tile_rows=max(rows or [height]), reg_filters=0, reg_vectors=0,
                            fuse_stages=fuse_stages, lanes=simd.lanes)
    filters, vectors = REGISTER_TILE
    if s.bf16:
        # vdpbf16ps (x86_bf16.INTRIN_PIXELS) takes whole vectors: the tile's divide a task's,
        # and as many accumulators as 4 x 2.
        vectors = max(divisors(task_vectors(s, config, fuse_stages), vectors))
        filters = filters * REGISTER_TILE[1] // vectors
    return replace(config, reg_filters=max(divisors(s.lego_filters, filters)),
                   reg_vectors=vectors)


def task_vectors(spec: LegoConvSpec, config: FlatLegoConfig, fuse_stages: bool) -> int:
    """The vectors of ``config.lanes`` pixels in the maps a task computes (a whole map's
    when the stages run one after the other), rounded down."""
    s = spec
    if taps(s):
        pitch, rows = flat_layout(s)
        pixels = (rows - 1) * pitch + s.out_width
    else:
        pixels = config.tile_rows * s.out_width if fuse_stages else flat_pixels(s)
    return pixels // config.lanes


def dpbf16ps_flat_unsupported(spec: LegoConvSpec) -> str | None:
    """Why the bf16 kernel of ``spec`` cannot keep its maps pixels innermost on
    ``vdpbf16ps`` (without AMX); None if it can: a 1x1 unpadded layer whose output pixels are
    whole vectors of 16, or a kxk one in ``bf16.flat_layout`` (whose tasks are whole
    vectors; ``bf16.flat_unsupported`` has the rest)."""
    s = spec
    if s.kernel != (1, 1) or any(s.padding):
        return None
    if flat_pixels(s) % DPBF16PS_LANES:
        return (f"{flat_pixels(s)} output pixels, not whole vectors of {DPBF16PS_LANES} "
                "(flat_pad_to rounds them up)")
    return None


def default_amx_config(spec: LegoConvSpec, cores: int, simd: SimdProfile) -> FlatLegoConfig:
    """bf16 on AMX: row tiles as above whose pixels are whole tiles (else stage by stage),
    2 x 2 accumulator tiles where they divide."""
    s = spec
    if not simd.amx_bf16:
        raise ValueError(f"a bf16 kernel with flat maps computes them on AMX; {simd.name} "
                         "has no AMX")
    tile_limit = 2 * simd.lego_tile_bytes
    tile = tile_pixels(s)
    if taps(s):
        # kxk: the row tasks are the maps' layout (bf16.flat_layout), and there are few of
        # them (bf16.MIN_FLAT_TASKS): fused, they beat stage by stage from one a core
        # (lego_resnet50's 3x3 layers alone, default schedules: 128->128 at 28x28 in 4 tasks
        # 0.11 against 0.16 ms; 64->64 at 56x56 in 8 tasks 0.13 against 0.17).
        pitch, layout_rows = flat_layout(s)
        fits, tasks = [layout_rows], cores
    else:
        pitch = s.out_width
        fits = [t for t in divisors(s.out_height) if (t * s.out_width) % tile == 0]
        tasks = AMX_TASKS_PER_CORE * cores
    rows = [t for t in fits
            if amx_bank_fits_l2(s) and t * pitch * s.splits * s.lego_filters * 4 <= tile_limit
            and (s.batch or 1) * (s.out_height // t) >= tasks]
    tile_rows = fits[0] if taps(s) else max(rows or [s.out_height])
    # A task's maps: its rows, the last one ending at the width (whole rows for 1x1 layers).
    task_pixels = (tile_rows - 1) * pitch + s.out_width
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
    spec = spec_of(sch.mod["main"])
    if spec is not None and taps(spec):
        _taps_schedule(sch, config, spec)
        return
    if config.fuse_stages:
        task, row_in = _fused_row_tasks(sch, gather, lego, config.tile_rows)
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
        _vectorize_pack(sch, pack, config.tile_pixels or config.lanes, spec)
    if config.amx:
        _amx_tiles(sch, lego, config)
    else:
        _register_tile(sch, lego, config, bf16=pack is not None)


def _register_tile(sch: s_tir.Schedule, lego, config: FlatLegoConfig, bf16: bool) -> None:
    """Compute once: the register tile (filters x vectors of pixels) runs the whole
    reduction over a split's channels (and a kxk layer's taps). fp32: an FMA of a filter's
    weight (broadcast) and a vector; bf16: a vdpbf16ps of a filter's pair of channels and a
    vector of pixels' pairs. A vector count that does not divide the pixels leaves a
    predicate on whole vectors (fp32; bf16's tensorized vectors take none, so its tiles
    divide them: ``default_flat_config``)."""
    loops = sch.get_loops(lego)
    reduction = [loop for loop, iv in zip(loops[-len(sch.get(lego).iter_vars):],
                                          sch.get(lego).iter_vars)
                 if iv.iter_type == tirx.IterVar.CommReduce]
    spatial = loops[:len(loops) - len(reduction)]
    filt, pix = spatial[-2:]
    filt_o, filt_i = sch.split(filt, [None, config.reg_filters])
    pix_o, pix_v, pix_l = sch.split(pix, [None, config.reg_vectors, config.lanes])
    sch.reorder(filt_o, pix_o, *reduction, filt_i, pix_v, pix_l)
    if not config.fuse_stages:   # the maps' own loops: image, split[, task], filters
        sch.parallel(sch.fuse(*spatial[:-2], filt_o))
    acc = sch.cache_write(lego, 0, "local")
    sch.reverse_compute_at(acc, pix_o, preserve_unit_loops=True)
    sch.unroll(filt_i)
    sch.unroll(pix_v)
    if not bf16:
        sch.vectorize(pix_l)
    sch.vectorize(sch.split(sch.get_loops(acc)[-1], [None, config.lanes])[1])
    init = sch.decompose_reduction(lego, reduction[0])
    if bf16:
        init_filters, init_vectors, init_lanes = sch.get_loops(init)[-3:]
        sch.unroll(init_filters)
        sch.unroll(init_vectors)
        sch.vectorize(init_lanes)
        tensorize_dot(sch, pix_l, pix_o, INTRIN_PIXELS)


def _taps_schedule(sch: s_tir.Schedule, config: FlatLegoConfig, spec: LegoConvSpec
                   ) -> None:
    """A kxk bf16 kernel (``bf16.flat_layout``): the padded input packed first,
    in parallel; then tasks of ``tile_rows`` rows, each computing its maps and then their
    gather-sum (fused stages), or each stage in parallel on its own. The tasks are made on
    the output rows as for 1x1 layers; the maps of a task are whole tiles."""
    gather, lego = sch.get_sblock(GATHER_BLOCK), sch.get_sblock(LEGO_BLOCK)
    pack = sch.get_sblock(PACK_BLOCK)
    sch.parallel(sch.fuse(*sch.get_loops(pack)[:3]))
    _pack_padded_rows(sch, sch.get_loops(pack)[-1], spec)
    image, channel, _, col = sch.get_loops(gather)
    if config.fuse_stages:
        _fused_row_tasks(sch, gather, lego, config.tile_rows)
    else:
        sch.parallel(sch.fuse(image, channel))
    sch.vectorize(col)     # along a row: the maps' rows are longer
    if config.amx:
        _amx_tiles(sch, lego, config)
    else:
        _register_tile(sch, lego, config, bf16=True)


def _fused_row_tasks(sch: s_tir.Schedule, gather, lego, tile_rows: int) -> tuple:
    """Parallel tasks of ``tile_rows`` output rows, each computing its maps, then their
    gather-sum: (the task loop, the gather's rows in it)."""
    image, channel, row, col = sch.get_loops(gather)
    row_tile, row_in = sch.split(row, [None, tile_rows])
    sch.reorder(image, row_tile, channel, row_in, col)
    task = sch.fuse(image, row_tile)
    sch.parallel(task)
    sch.compute_at(lego, task, preserve_unit_loops=True)
    return task, row_in


def _vectorize_pack(sch: s_tir.Schedule, pack, tile_pixels: int, spec: LegoConvSpec | None
                    ) -> None:
    """The packing of the bf16 input of a strided layer in vectors of one output row where
    its pixels are whole rows, else in vectors of a tile's pixels.

    A strided layer reads every other input pixel, which TVM loads lane by lane: in vectors of
    a tile, each lane's address came from a vector division of the flat pixel by the width
    (measured: ~35% of a 256->512 1x1 stride-2 layer at 56x56). Along a row the addresses are
    a loop counter plus constants: that layer alone ran 0.37 -> 0.29 ms, 512->1024 at 28x28
    0.34 -> 0.31, 1024->2048 at 14x14 0.46 -> 0.41 (2-core Xeon with AMX, default
    schedules)."""
    pixels = sch.get_loops(pack)[-1]
    extent = int(sch.get(pixels).extent)
    if spec is not None and spec.flat_pad_to:
        # The vectors before the padded one read no clamped pixel: partitioned from it, they
        # load whole vectors (stride 1).
        outer, inner = sch.split(pixels, [None, tile_pixels])
        whole = spec.out_height * spec.out_width // tile_pixels
        for part in sch.loop_partition(outer, [whole, None]):
            sch.vectorize(sch.get_loops(sch.get_child_blocks(part)[0])[-1])
    elif spec is not None and spec.stride != (1, 1) and extent % spec.out_width == 0:
        sch.vectorize(sch.split(pixels, [extent // spec.out_width, spec.out_width])[1])
    else:
        sch.vectorize(sch.split(pixels, [None, tile_pixels])[1])


def _pack_padded_rows(sch: s_tir.Schedule, pixels, spec: LegoConvSpec) -> None:
    """The padded input of a kxk kernel in rows of ``pitch``, each partitioned into the
    padding and the image, so that the image's pixels are copied in vectors without a
    condition (with one, TVM loads them lane by lane)."""
    pitch = flat_layout(spec)[0]
    (pt, pl), height, width = spec.padding[:2], spec.height, spec.width
    rows = int(sch.get(pixels).extent) // pitch
    row, col = sch.split(pixels, [rows, pitch])
    _, image_rows, _ = sch.loop_partition(row, [pt, height, None])
    for part in sch.get_loops(sch.get_child_blocks(image_rows)[0])[-1:]:
        _, image_cols, _ = sch.loop_partition(part, [pl, width, None])
        sch.vectorize(image_cols)


def _amx_tiles(sch: s_tir.Schedule, lego, config: FlatLegoConfig) -> None:
    """The maps in AMX tiles: for each split, 16F filters and NQ pixels, one micro-kernel
    call from zero tiles over the whole reduction (``x86_amx_flat.py``). The maps' loops:
    image, split[, row task], filter, pixel, then the reduction: blocks[, ry, rx], pairs."""
    kernel_taps = taps(spec_of(sch.mod["main"]))
    kxk = kernel_taps is not None
    loops = sch.get_loops(lego)
    reduce = loops[-4:] if kxk else loops[-2:]
    spatial = loops[:len(loops) - len(reduce)]
    image, split, *task, filt, pix = spatial[-5:] if kxk else spatial[-4:]
    outer = spatial[:len(spatial) - (5 if kxk else 4)]
    filt_o, filt_i = sch.split(filt, [None, config.reg_filters])
    pix_o, pix_i = sch.split(pix, [None, config.tile_pixels * config.reg_vectors])
    # A reduction loop of extent 1 (32 channels a split) goes above the tile: the
    # intrinsic's description has none.
    unit = [r for r in reduce if int(sch.get(r).extent) == 1]
    sch.reorder(split, *task, filt_o, pix_o, *unit, filt_i, pix_i,
                *[r for r in reduce if r not in unit])
    if not config.fuse_stages:
        sch.parallel(sch.fuse(*outer, image, split, *task, filt_o))
    blocks = int(sch.get(reduce[0]).extent)
    tensorize_tiles(sch, filt_i, pix_o, config.reg_filters // AMX_TILE, config.reg_vectors,
                    config.tile_pixels, blocks, kernel_taps)
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
            vectors = [1, 2, 3, 4]
            if spec.bf16:       # vdpbf16ps takes whole vectors: those dividing a task's
                vectors = [v for v in vectors
                           if task_vectors(spec, default, fuse_stages) % v == 0]
            config = replace(
                config,
                reg_filters=sample_divisor(space, spec.lego_filters, 16, default.reg_filters),
                reg_vectors=sample_choice(space, vectors, default.reg_vectors
                                          if default.reg_vectors in vectors else 1))
        apply_flat_schedule(space, config)
        spaces.append(space)
    return spaces
