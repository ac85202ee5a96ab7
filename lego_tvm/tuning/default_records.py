"""Tuned records that never lose to the hand-written default schedule.

MetaSchedule keeps, per kernel, the candidate its runner timed fastest. Two things made
that slower than the default schedule here (measured on the layer benchmark's kernels,
AMD EPYC, 2 threads): the search never tried the default's tile sizes (128ch 56x56 s2:
best candidate 2.21 ms, default 1.71 ms), and one noisy timing per candidate picks a lucky
one. So ``tune``

1. before searching, times each fused kernel's default schedule with the tuning's own
   builder and runner and commits it as a record (``seed``): the search has to beat it;
2. after searching, times each kernel's best record against the default schedule side by
   side, here, in alternating rounds (``check``). When the default is faster, it is
   committed again with a time below the record's: its measured ratio to the record,
   applied to the record's time (so on the runner's scale). The database then returns the
   default for that kernel.

Only the fused kernels (the ones with a hand-written default) take part.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import tvm
from tvm import s_tir
from tvm.target import Target

from ..op.fused_op import spec_of

log = logging.getLogger("lego_tvm")


@dataclass
class Verdict:
    kernel: str
    tuned_ms: float
    default_ms: float
    kept: str                 # "tuned" or "default"

    def as_dict(self) -> dict:
        return asdict(self)


def default_schedule(mod: tvm.IRModule, target: Target) -> s_tir.Schedule | None:
    """The hand-written default schedule of a task's kernel (None if it has none)."""
    from ..schedules.cuda import FusedLegoCudaRule
    from ..schedules.lego_cpu import FusedLegoRule

    func = mod["main"]
    if spec_of(func) is None:
        return None
    rule = FusedLegoCudaRule() if target.kind.name == "cuda" else FusedLegoRule()
    sch = rule.apply(func, target, False)
    if sch is None:
        return None
    # Replayed on the workload module (whose function keeps its own attributes).
    replay = s_tir.Schedule(mod)
    sch.trace.apply_to_schedule(replay, remove_postproc=False)
    return replay


def _trace_key(trace) -> str:
    return json.dumps(trace.as_json(), sort_keys=True, default=str)


def seed(tasks, database, builder, runner, target: Target) -> int:
    """Time and commit the default schedule of every task that has one and whose default
    is not in ``database`` yet (a resumed run has it). Returns how many were committed."""
    from tvm.s_tir import meta_schedule as ms

    pending = []
    limit = len(database.get_all_tuning_records())
    for task in tasks:
        mod = task.dispatched[0]
        sch = default_schedule(mod, target)
        # Two kernels may share a default trace (same shapes, one with a residual): the
        # trace is looked for among this kernel's own records.
        if sch is not None and _trace_key(sch.trace) not in {
                _trace_key(r.trace) for r in _records(database, mod, limit)}:
            pending.append((task.task_name, mod, sch))
    if not pending:
        return 0
    log.warning("lego-tvm: timing the default schedule of %d kernels first (the search has "
                "to beat it)", len(pending))
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, _, sch in pending])
    committed = 0
    for (name, mod, sch), result in zip(pending, built):
        if result.error_msg:
            log.warning("lego-tvm: the default schedule of %s did not build: %s", name,
                        result.error_msg.splitlines()[-1])
            continue
        args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
        device = "cuda" if target.kind.name == "cuda" else "cpu"
        (future,) = runner.run([ms.runner.RunnerInput(result.artifact_path, device, args_info)])
        run = future.result()
        if run.error_msg or not run.run_secs:
            log.warning("lego-tvm: the default schedule of %s did not run: %s", name,
                        (run.error_msg or "no time").splitlines()[-1])
            continue
        database.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, database.commit_workload(mod), [t.value for t in run.run_secs], target,
            args_info))
        committed += 1
    return committed


def check(tasks, database, target: Target, rounds: int = 5) -> list[Verdict]:
    """Time each task's best record against its default schedule, here, side by side; where
    the default is faster, commit it so that the database prefers it. The target must run
    on this CPU."""
    from tvm.s_tir import meta_schedule as ms

    from ..support.timing import best_of_rounds
    from ..backend.kernel_timing import fused_kernel_run

    verdicts = []
    defaults = [(t, default_schedule(t.dispatched[0], target)) for t in tasks]
    checkable = [(task, default) for task, default in defaults if default is not None]
    for number, (task, default) in enumerate(checkable, 1):
        mod = task.dispatched[0]
        workload = database.commit_workload(mod)
        (best,) = database.get_top_k(workload, 1) or (None,)
        if best is None or _trace_key(best.trace) == _trace_key(default.trace):
            continue
        func, spec = mod["main"], spec_of(mod["main"])
        tuned_run, applied = fused_kernel_run(func, spec, target, _only(best, workload))
        if not applied:          # not seen; then nothing is checked for this kernel
            log.warning("lego-tvm: the best record of %s did not apply to its own kernel; "
                        "it is not checked", task.task_name)
            continue
        default_run, _ = fused_kernel_run(func, spec, target, None)
        tuned_ms, default_ms = best_of_rounds([tuned_run, default_run], rounds)
        kept = "tuned" if tuned_ms < default_ms else "default"
        log.warning("lego-tvm: [check %d/%d] %s: best tuned record %.3f ms, default schedule "
                    "%.3f ms -> %s", number, len(checkable), task.task_name, tuned_ms,
                    default_ms, kept)
        if kept == "default":
            record_secs = sum(t.value for t in best.run_secs) / len(best.run_secs)
            database.commit_tuning_record(ms.database.TuningRecord(
                default.trace, workload, [record_secs * default_ms / tuned_ms], target,
                ms.arg_info.ArgInfo.from_prim_func(func)))
        verdicts.append(Verdict(task.task_name, tuned_ms, default_ms, kept))
    return verdicts


def _records(database, mod: tvm.IRModule, limit: int) -> list:
    """The measured records of ``mod``'s kernel in ``database`` (``limit``: at least the
    number of records in it, to get them all)."""
    if not database.has_workload(mod):
        return []
    return list(database.get_top_k(database.commit_workload(mod), limit))


def _only(record, workload):
    """A database holding just ``record`` (so the kernel is built from exactly it)."""
    from tvm.s_tir import meta_schedule as ms

    memory = ms.database.MemoryDatabase()
    memory.commit_tuning_record(ms.database.TuningRecord(
        record.trace, memory.commit_workload(workload.mod), record.run_secs, record.target,
        record.args_info))
    return memory
