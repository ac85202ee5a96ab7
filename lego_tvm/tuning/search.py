"""MetaSchedule tuning (XGBoost cost model) of a model's fused kernels, written as a
tuning log (``logs.py`` reads them).

The fused Lego operator is tuned by a custom MetaSchedule rule registered here
(``schedules.lego_cpu.tunable_schedules`` on CPUs, ``schedules.cuda.tunable_schedules`` on
GPUs: the default schedule's body with sampled tile sizes).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from tvm.target import Target
from tvm_ffi import register_global_func

from ..op.fused_op import SCHEDULE_RULE, spec_of
from ..support.progress import Progress, as_progress
from . import default_records
from .logs import (MANIFEST, check_log, check_records, count_records, identity, read_manifest,
                   register_intrinsics, target_key, write_manifest)

log = logging.getLogger("lego_tvm")
# The PrimFuncs transform/fuse_conv2d.py creates.
OUR_KERNELS = ("fused_lego_conv2d", "fused_conv2d")


# MetaSchedule looks a block's custom rule up as s_tir.meta_schedule.<cpu|cuda>.<rule>.
@register_global_func(f"s_tir.meta_schedule.cpu.{SCHEDULE_RULE}")
def _tunable_lego_rule_cpu(sch, _block):
    from ..schedules.lego_cpu import tunable_schedules

    # tune() enters the target's scope; the core count and vector unit come from it.
    return tunable_schedules(sch, spec_of(sch.mod["main"]), Target.current())


@register_global_func(f"s_tir.meta_schedule.cuda.{SCHEDULE_RULE}")
def _tunable_lego_rule_cuda(sch, _block):
    from ..schedules.cuda import tunable_schedules

    return tunable_schedules(sch, spec_of(sch.mod["main"]), Target.current())


def tune(model, example_inputs, log_dir: str | Path, target=None, trials: int = 64,
         model_name: str | None = None, lego: bool = True, seed: int | None = None,
         all_kernels: bool = False, remote=None, layout: str = "NCHW",
         winograd: bool = False, precision: str = "fp32", progress="default") -> dict:
    """Tune ``model`` with MetaSchedule + XGBoost and write the log to ``log_dir``.

    ``remote``: a ``lego_tvm.remote.Remote`` (an RPC tracker + device key, or an RPC
    server): trials are built here (cross-compiled for ``target``) and timed there. Without
    it they are timed on this machine, which must be able to run ``target``'s code.

    Only the fused conv kernels (Lego and ordinary convs) are tuned unless ``all_kernels``:
    pooling, matmuls and elementwise functions are small and keep their default schedules.
    ``layout``: as for ``compile`` (the records are for the kernels that layout makes).
    ``winograd``: also tune the Winograd F(2x2, 3x3) and F(4x4, 3x3) kernels of the 3x3
    stride-1 Lego layers, which ``compile(..., compute_once="winograd" or "auto")`` uses.
    ``precision="bf16"``: tune the bf16 kernels ``compile(..., precision="bf16")`` builds
    (for the host, with its AVX512_BF16 enabled, as compile does). Resumable: records already in ``log_dir`` count towards ``trials`` and seed the search;
    an interrupted run keeps every record it finished. Before the search each fused kernel's
    default schedule is timed and committed as a record (on top of ``trials``); after it,
    on this CPU, each kernel's best record is checked against the default
    (``default_records.py``; the manifest's ``checked``). ``progress``: a
    ``support.progress.Progress`` (the default shows a bar on a terminal, lines elsewhere:
    trials done out of the budget, kernels finished, best time, time left), a callable
    taking lines, or ``None`` (quiet). Returns the manifest.
    """
    import torch

    from .remote import describe
    from ..support.targets import (TargetError, cross_compiler, host_cpu_name, resolve_target,
                                   target_arch, why_not_runnable_here)

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(trials, int) or trials < 0:
        raise ValueError(f"trials must be a whole number >= 0, not {trials!r}")
    if Path(log_dir).exists() and not Path(log_dir).is_dir():
        raise NotADirectoryError(f"the tuning log {log_dir} must be a folder; it is a file")
    tvm_target = resolve_target(target)
    if precision == "bf16":
        from ..backend.precision import bf16_target

        if winograd:
            raise ValueError("winograd=True tunes fp32 Winograd kernels; bf16 kernels are direct")
        tvm_target = bf16_target(target, tvm_target)
    cc = cross_compiler(tvm_target)
    if remote is None and why_not_runnable_here(tvm_target):
        raise TargetError(f"cannot time {target_key(tvm_target)} kernels on this machine "
                          f"({why_not_runnable_here(tvm_target)}): give an RPC tracker or "
                          "server of such a device")
    if remote is not None:
        device = describe(remote.connect(), target_arch(tvm_target))
    else:
        device = {"hardware": host_cpu_name(), "emulated": False}
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    if (log_dir / MANIFEST).exists():
        check_log(log_dir, tvm_target, precision)   # never mix records of another target/TVM
    else:
        check_records(log_dir, complete=False)  # a first run stopped half-way, resumed
    tasks = kernel_tasks(model, example_inputs, tvm_target, lego, layout, all_kernels, winograd,
                         precision)
    done = count_records(log_dir)
    remaining = trials - done
    log.warning("lego-tvm: tuning %d kernels of %s for %s: %d trials requested, %d already in %s",
                len(tasks), model_name or type(model).__name__, target_key(tvm_target), trials,
                done, log_dir)
    if 0 < remaining < 2 * len(tasks):
        log.warning("lego-tvm: %d trials for %d kernels is too few for every kernel to get a "
                    "tuned record; those without one keep their default schedule (seeded as "
                    "a record)", remaining, len(tasks))
    previous = read_manifest(log_dir) if (log_dir / MANIFEST).exists() else {}
    checked = previous.get("checked")
    if tasks:
        # Inside the target's scope: the custom rule reads the core count from it.
        with tvm_target:
            database = _tune_tasks(tasks, log_dir, remaining, seed, cc, remote, tvm_target,
                                   Progress() if progress == "default" else as_progress(progress))
            # Defaults are seeded everywhere, but checked only where this CPU runs the
            # target's code; again only when records were added.
            if remote is None and tvm_target.kind.name == "llvm" and (
                    checked is None or count_records(log_dir) > done):
                verdicts = {v["kernel"]: v for v in checked or []}
                verdicts.update((v.kernel, v.as_dict())
                                for v in default_records.check(tasks, database, tvm_target))
                checked = list(verdicts.values())

    batch = int(example_inputs[0].shape[0]) if example_inputs else None
    manifest = {**identity(tvm_target), "model": model_name or type(model).__name__,
                "batch": batch, "trials": count_records(log_dir),
                "date": time.strftime("%Y-%m-%d"), "lego_pass": lego, "layout": layout,
                "precision": precision,
                **device, **({"checked": checked} if checked is not None else {})}
    write_manifest(log_dir, manifest)
    return manifest


def kernel_tasks(model, example_inputs, target: Target, lego: bool = True,
                 layout: str = "NCHW", all_kernels: bool = False, winograd: bool = False,
                 precision: str = "fp32") -> list:
    """MetaSchedule's tasks for ``model`` as ``tune`` tunes it: the fused conv kernels (all
    kernels with ``all_kernels``; with ``winograd``, the Winograd forms of the Lego kernels
    that have them too; in bf16, the kernels as ``precision="bf16"`` builds them)."""
    from tvm.s_tir import meta_schedule as ms

    from ..backend import compute_once, pipeline
    from ..op.winograd import TILES

    fused, _ = pipeline.import_and_fuse(model, example_inputs, target, lego=lego, layout=layout)
    if precision == "bf16":
        from ..backend.precision import to_bf16

        fused = to_bf16(fused, target)[0]
    modules = [fused] + ([compute_once.winograd_everywhere(fused, tile) for tile in TILES]
                         if winograd else [])
    tasks = {}
    for mod in modules:
        for task in ms.relax_integration.extract_tasks(pipeline.lower(mod, target), target):
            if all_kernels or any(k in task.task_name for k in OUR_KERNELS):
                tasks.setdefault(task.task_name, task)
    return list(tasks.values())


def _tune_tasks(tasks, log_dir: Path, trials: int, seed: int | None, cc: str | None,
                remote, target: Target, progress: Progress):
    """``tune_relax`` minus its own task extraction (minutes for ResNet-50), on ``tasks``,
    after seeding the default schedules (``default_records.py``). Returns the database."""
    # MetaSchedule's logging setup reads every handler's name from its logger and fails on
    # an unnamed one (another tool's, pytest's): keep those off it while it tunes.
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = [h for h in ms_logger.handlers if h.get_name() is None]
    for handler in unnamed:
        ms_logger.removeHandler(handler)
    try:
        return _run_tuning(tasks, log_dir, trials, seed, cc, remote, target, progress)
    finally:
        for handler in unnamed:
            ms_logger.addHandler(handler)


def _run_tuning(tasks, log_dir: Path, trials: int, seed: int | None, cc: str | None,
                remote, target: Target, progress: Progress):
    from functools import partial

    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extracted_tasks_to_tune_contexts

    from . import measure

    register_intrinsics(log_dir)           # resuming: the records may name AMX intrinsics
    database = ms.database.JSONDatabase(work_dir=str(log_dir))
    builder = ms.builder.LocalBuilder(
        f_build=measure.build, f_export=partial(measure.export_with, cc) if cc else None,
        timeout_sec=120)
    runner = remote.runner() if remote is not None else \
        ms.runner.LocalRunner(f_alloc_argument=measure.alloc_arguments, timeout_sec=60)
    progress(f"tuning: timing the default schedule of {len(tasks)} kernels")
    default_records.seed(tasks, database, builder, runner, target)
    if trials > 0:
        contexts, weights = extracted_tasks_to_tune_contexts(
            extracted_tasks=tasks, work_dir=str(log_dir), space="post-order-apply",
            strategy="evolutionary", seed=seed)
        with progress.bar(trials, "trials", "tuning") as bar:
            ms.tune.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=str(log_dir),
                max_trials_global=trials,
                # Small rounds so that every kernel gets trials before the budget runs out.
                num_trials_per_iter=max(2, min(16, trials // len(tasks))),
                builder=builder, runner=runner, database=database,
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                   tuning_progress(bar)],
                cost_model=ms.cost_model.XGBModel(
                    num_warmup_samples=min(16, max(1, trials // 4))))
    return database


def tuning_progress(bar):
    """A MetaSchedule measure callback that advances ``bar`` by each round's trials and
    shows the kernels finished and the best time of the kernel just measured."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class TuningProgress(PyMeasureCallback):
        def __init__(self):
            self.best: dict[int, float] = {}

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            times = [sum(map(float, r.run_secs)) / len(r.run_secs) for r in runner_results
                     if r.error_msg is None and r.run_secs]
            if times:
                self.best[task_id] = min(self.best.get(task_id, float("inf")), *times)
            tasks = task_scheduler.tasks_
            finished = sum(bool(t.is_terminated) for t in tasks)
            best = self.best.get(task_id)
            name = tasks[task_id].ctx.task_name
            bar.set_postfix_str(f"kernels finished {finished}/{len(tasks)}; {name}: best "
                                + (f"{best * 1e3:.3f} ms" if best is not None else "none yet"))
            bar.update(len(measure_candidates))

    return TuningProgress()
