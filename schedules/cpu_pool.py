"""The CPU schedule of a max-pool in two passes (``op/max_pool.py``: the max over each
window's rows, then over its columns): one task per image and channel, the rows' pass for
the channel first (in the cache when the columns' pass reads it), both passes in vector
lanes along a row."""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from ..op.max_pool import POOL_BLOCK, ROWS_BLOCK, SEPARABLE_MAX_POOL
from ..support.tiling import power_of_two_lanes
from .simd import simd_profile


class SeparableMaxPool(ScheduleRule):
    def apply(self, func, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm" or \
                func.attrs is None or not func.attrs.get(SEPARABLE_MAX_POOL):
            return None
        lanes = simd_profile(target).lanes
        sch = s_tir.Schedule(func)
        rows, pool = sch.get_sblock(ROWS_BLOCK), sch.get_sblock(POOL_BLOCK)
        image, channel, _, column = sch.get_loops(pool)
        task = sch.fuse(image, channel)
        sch.parallel(task)
        sch.compute_at(rows, task)
        for block, loop in ((rows, sch.get_loops(rows)[-1]), (pool, column)):
            extent = sch.get(loop).extent
            if isinstance(extent, tirx.IntImm):
                sch.vectorize(sch.split(loop, [None, power_of_two_lanes(int(extent), lanes)])[1])
        return sch
