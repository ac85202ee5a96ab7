"""The CPU schedule of a matmul at a small batch whose weights are ``[inputs, outputs]``
(``out[b, j] = sum_k x[b, k] * w[k, j]``, a classifier): each task sums a stretch of the
inputs over every output, reading its rows of the weights from start to end; then the
tasks' partial sums are added.

Each weight is read once, so the time is how fast the weights come in from memory: with
each task on a column strip (``TiledReduction``), every task reads a few bytes of each row,
and lego_resnet50's classifier (2048 x 1000, weights not in the cache) took 1.03 ms in fp32
and 0.84 in bf16; rows read through, 0.56 and 0.42 ms (2-core Intel Xeon, 2026-12-01; in a
first trial on the bf16 weights, 4 parts of 512 rows ran 0.32 ms, 2 parts 0.37, 8 parts
0.33).
"""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule, normalize_prim_func
from tvm.target import Target

from .simd import simd_profile
from ..support.tiling import power_of_two_lanes

PARTS = 4               # stretches of the inputs summed apart (tasks)
MAX_BATCH = 8           # rows of x: above this, the weights are reused enough to tile
MIN_INPUTS = 256


class StreamingGemv(ScheduleRule):
    """One reduction block ``out[b, j] += x[b, k] * w[k, j]`` (w indexed last by j), a
    small static batch: the reduction split into ``PARTS`` parallel tasks (``rfactor``),
    each running its rows of w with the outputs in vector lanes; an elementwise epilogue
    after the sum stays its own block."""

    def apply(self, func, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        reductions = [info for info in infos if info.is_reduction()]
        if len(reductions) != 1 or infos[0] is not reductions[0]:
            return None
        block = reductions[0].block_rv
        # [batch,] outputs, inputs (dlight's normal form drops a batch of 1)
        if [it.kind for it in reductions[0].iters] not in (["S", "R"], ["S", "S", "R"]):
            return None
        extents = [sch.get(loop).extent for loop in sch.get_loops(block)]
        if not all(isinstance(e, tirx.IntImm) for e in extents):
            return None
        *batch, outputs, inputs = (int(e) for e in extents)
        if (batch[0] if batch else 1) > MAX_BATCH or inputs < MIN_INPUTS or inputs % PARTS or \
                not _weights_by_rows(sch.get(block)):
            return None
        lanes = power_of_two_lanes(outputs, simd_profile(target).lanes)
        part, _ = sch.split(sch.get_loops(block)[-1], [PARTS, None])
        partial = sch.rfactor(part, 0)
        *b, j, part, k = sch.get_loops(partial)
        j_outer, j_lane = sch.split(j, [None, lanes])
        sch.reorder(part, *b, k, j_outer, j_lane)
        sch.parallel(part)
        sch.vectorize(j_lane)
        sch.decompose_reduction(partial, k)
        sch.vectorize(sch.split(sch.get_loops(block)[-2], [None, lanes])[1])
        for info in infos[1:]:      # the epilogue: vector lanes along its last loop
            loop = sch.get_loops(info.block_rv)[-1]
            if isinstance(sch.get(loop).extent, tirx.IntImm):
                sch.vectorize(sch.split(loop, [None, lanes])[1])
        return sch


def _weights_by_rows(block) -> bool:
    """A buffer read at ``[k, j]``: the reduction iter first, the output column last."""
    column, reduce = (iv.var for iv in block.iter_vars[-2:])
    for region in block.reads:
        if len(region.region) == 2 and region.region[0].min.same_as(reduce) and \
                region.region[1].min.same_as(column):
            return True
    return False
