"""Default CPU schedules for everything in a model that is not a fused Lego operator.

Two dlight rules: ``TiledReduction`` for PrimFuncs built around one reduction (convolution,
pooling, matmul) and ``ParallelInjective`` for elementwise / layout functions. Neither is
tuned; they exist so that no part of a compiled model runs as naive serial loops.
"""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule, normalize_prim_func
from tvm.target import Target

from .simd import simd_profile
from ..support.tiling import largest_divisor_at_most, vector_block


def _normalized(func, target: Target):
    """``(schedule, block infos)`` of a CPU PrimFunc in dlight's normal form, or None."""
    if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
        return None
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    return None if infos is None else (sch, infos)


def _try(action, *args) -> bool:
    try:
        action(*args)
        return True
    except Exception:  # noqa: BLE001 - TVM raises ScheduleError / TVMError
        return False


def _only_reader(sch: s_tir.Schedule, producer, block) -> bool:
    """``block`` is the one reader of ``producer`` and reads no other block's output."""
    consumers = sch.get_consumers(producer)
    return (len(consumers) == 1 and sch.get(consumers[0]).same_as(sch.get(block))
            and len(sch.get_producers(block)) == 1)


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


class TiledReduction(ScheduleRule):
    """One reduction block: producers inlined, output tiled into a register block
    (channels x vectorized columns) that accumulates in registers over the whole reduction,
    epilogue fused into the write-back, outer loops parallel."""

    def apply(self, func, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        normalized = _normalized(func, target)
        if normalized is None:
            return None
        sch, infos = normalized
        reductions = [i for i, info in enumerate(infos) if info.is_reduction()]
        if len(reductions) != 1:
            return None
        red_index = reductions[0]
        for info in infos[:red_index]:
            _try(sch.compute_inline, info.block_rv)
        red = infos[red_index]
        kinds = [it.kind for it in red.iters]
        if "O" in kinds or "R" not in kinds or "S" not in kinds:
            return None
        loops = sch.get_loops(red.block_rv)
        extents = [_extent(sch, loop) for loop in loops]
        if None in extents:
            return None
        spatial = [i for i, k in enumerate(kinds) if k == "S"]
        reduce = [i for i, k in enumerate(kinds) if k == "R"]

        # Step 1: register tile = channel block x vectorized column block.
        simd = simd_profile(target)
        lanes = simd.lanes
        vec = spatial[-1]
        reg = spatial[1] if len(spatial) == 4 else (spatial[-2] if len(spatial) > 1 else None)
        col_block = vector_block(extents[vec], lanes)
        vec_o, vec_i = sch.split(loops[vec], [None, col_block])
        outer = [loops[i] for i in spatial if i not in (vec, reg)]
        inner = [vec_i]
        if reg is not None:
            vectors = -(-col_block // lanes)
            reg_o, reg_i = sch.split(
                loops[reg], [None, largest_divisor_at_most(extents[reg], simd.accumulators // vectors)])
            outer.insert(spatial.index(reg), reg_o)
            inner.insert(0, reg_i)
        outer.append(vec_o)
        sch.reorder(*outer, *[loops[i] for i in reduce], *inner)

        # Step 2: accumulate in registers; fold the elementwise epilogue into the write-back.
        write_back = sch.cache_write(red.block_rv, 0, "local")
        for info in infos[red_index + 1:]:
            # Only a chain: a value with two readers (GELU's erf form, x * sigmoid(x)) inlined
            # into the write-back is read before it is written, and TVM 0.27 does not refuse.
            if not (_only_reader(sch, write_back, info.block_rv)
                    and _try(sch.reverse_compute_inline, info.block_rv)):
                break
        task = sch.fuse(*outer)
        sch.parallel(task)
        sch.reverse_compute_at(write_back, task)
        if len(inner) == 2:
            sch.unroll(inner[0])
        _try(sch.vectorize, inner[-1])
        _try(sch.vectorize, sch.get_loops(write_back)[-1])
        sch.decompose_reduction(red.block_rv, sch.get_loops(red.block_rv)[1])
        _schedule_leftover_blocks(sch, lanes, exclude={red.name, red.name + "_init",
                                                       sch.get(write_back).name_hint})
        return sch


class ParallelInjective(ScheduleRule):
    """Everything else (elementwise, broadcast, layout, degenerate reductions): intermediate
    spatial blocks inlined; each remaining spatial block's loops fused, split into parallel
    chunks and vector lanes; a remaining reduction block gets its outer loop parallel."""

    def apply(self, func, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        normalized = _normalized(func, target)
        if normalized is None:
            return None
        sch, infos = normalized
        for info in infos[:-1]:
            if not info.is_reduction():
                _try(sch.compute_inline, info.block_rv)
        _schedule_leftover_blocks(sch, simd_profile(target).lanes, exclude=set())
        return sch


def _schedule_leftover_blocks(sch: s_tir.Schedule, lanes: int, exclude: set[str]) -> None:
    root = sch.get_sblock("root") if _try(sch.get_sblock, "root") else None
    blocks = sch.get_child_blocks(root) if root is not None else []
    for block in blocks:
        if sch.get(block).name_hint in exclude:
            continue
        loops = sch.get_loops(block)
        if not loops or any(sch.get(loop).kind != tirx.ForKind.SERIAL for loop in loops):
            continue
        if any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(block).iter_vars):
            _try(sch.parallel, loops[0])   # fails harmlessly if it is a reduction loop
            continue
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        extent = _extent(sch, fused)
        if extent is None:              # a batch chosen at call time: parallel, not vectorized
            sch.parallel(fused)
            continue
        if extent >= 4 * lanes:
            chunk, lane = sch.split(fused, [None, lanes * largest_divisor_at_most(
                max(1, extent // lanes), 8)] if extent % lanes == 0 else [None, lanes])
            sch.parallel(chunk)
            _try(sch.vectorize, lane)
