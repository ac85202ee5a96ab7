"""Move shipped tuning logs onto a new compute version of the fused operator, without tuning
again: ``python tools/migrate_tuning_logs.py [tuning_logs/<target>/<log> ...]``.

A tuning record is keyed by the TIR of the kernel it was tuned for, so a change of the fused
operator's compute (``COMPUTE_VERSION``) orphans every record, even when the loops, and so
the schedule, are the same. For each log this extracts the kernels of the log's model as the
current code builds them, moves each record's schedule (its trace) onto the kernel with the
same spec, checks that the trace still applies, and rewrites the database and the manifest's
compute version. Records of other functions are kept when their TIR did not change. Use it
only for compute changes that leave the loop nest alone (say so in the commit); a change of
the loops needs tuning again.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import tvm_ffi
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from lego_tvm.bench.layers import BenchLayers
from lego_tvm.nn.zoo import get_model
from lego_tvm.op.fused_op import COMPUTE_VERSION, spec_of
from lego_tvm.tuning.logs import DATABASE_FILES, read_manifest, write_manifest
from lego_tvm.tuning.search import kernel_tasks


def migrate(log_dir: Path) -> str:
    manifest = read_manifest(log_dir)
    if manifest["compute_version"] == COMPUTE_VERSION:
        return f"{log_dir}: already compute version {COMPUTE_VERSION}"
    target = Target(manifest["target"])
    if manifest["model"] == "bench_layers":
        model = BenchLayers().eval()
        inputs = model.example
    else:
        model, x = get_model(manifest["model"], batch=manifest["batch"])
        inputs = (x,)
    tasks = kernel_tasks(model, inputs, target, lego=manifest.get("lego_pass", True),
                         layout=manifest.get("layout", "NCHW"), all_kernels=True)
    kernels = [task.dispatched[0] for task in tasks]
    by_spec = {json.dumps(spec_of(mod["main"]).as_dict()): mod for mod in kernels
               if spec_of(mod["main"]) is not None}
    old = ms.database.JSONDatabase(work_dir=str(log_dir))
    with tempfile.TemporaryDirectory() as tmp:
        new = ms.database.JSONDatabase(work_dir=tmp)
        moved = kept = dropped = 0
        for record in old.get_all_tuning_records():
            mod = record.workload.mod
            spec = spec_of(mod["main"])
            if spec is not None:
                mod = by_spec.get(json.dumps(spec.as_dict()))
            elif not any(tvm_ffi.structural_equal(mod, k) for k in kernels):
                mod = None
            if mod is None or not _applies(record.trace, mod):
                dropped += 1
                continue
            workload = new.commit_workload(mod)
            new.commit_tuning_record(ms.database.TuningRecord(
                record.trace, workload, record.run_secs, record.target, record.args_info))
            if spec is not None:
                moved += 1
            else:
                kept += 1
        for name in DATABASE_FILES:
            shutil.copyfile(Path(tmp) / name, log_dir / name)
    before, manifest["compute_version"] = manifest["compute_version"], COMPUTE_VERSION
    manifest.setdefault("migrated", []).append(
        f"records moved from compute version {before} to {COMPUTE_VERSION} by tools/migrate_tuning_logs.py: {moved} fused-kernel records "
        f"moved, {kept} others kept, {dropped} dropped")
    write_manifest(log_dir, manifest)
    return f"{log_dir}: {moved} fused-kernel records moved, {kept} kept, {dropped} dropped"


def _applies(trace, mod) -> bool:
    try:
        trace.apply_to_schedule(s_tir.Schedule(mod), remove_postproc=False)
        return True
    except Exception:  # noqa: BLE001 - TVM's ScheduleError: the loops changed
        return False


if __name__ == "__main__":
    logs = [Path(p) for p in sys.argv[1:]] or sorted(
        p.parent for p in Path("tuning_logs").glob("*/*/manifest.json"))
    for log in logs:
        print(migrate(log), flush=True)
