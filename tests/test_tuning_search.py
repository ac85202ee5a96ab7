"""MetaSchedule tuning of the fused operator: records, resuming, applying, refusing bad logs."""
import json
import re
import shutil

import pytest
import torch
from tvm.target import Target, codegen

import lego_tvm
from conftest import assert_matches_torch
from lego_tvm.tuning import default_records
from lego_tvm.tuning.default_records import _trace_key
from lego_tvm.op.fused_op import COMPUTE_VERSION, LEGO_BLOCK
from lego_tvm.backend.precision import with_host_bf16
from lego_tvm.check import error_against_torch
from lego_tvm.support.accuracy import BF16_TOLERANCE
from lego_tvm.support.targets import BF16_FEATURE, host_has_bf16, resolve_target
from lego_tvm.tuning.logs import DATABASE_FILES, MANIFEST, TuningLogError, count_records
from lego_tvm.tuning.search import kernel_tasks

pytestmark = pytest.mark.tuning


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    model = torch.nn.Sequential(lego_tvm.LegoConv2d(16, 32, 3), torch.nn.BatchNorm2d(32),
                                torch.nn.ReLU()).eval()
    x = torch.randn(1, 16, 14, 14)
    log_dir = tmp_path_factory.mktemp("log")
    lines = []
    manifest = lego_tvm.tune(model, (x,), log_dir, trials=6, model_name="tiny", seed=0,
                             progress=lines.append)
    manifest["progress_lines"] = lines      # (not on disk) for the progress test
    return model, x, log_dir, manifest


def test_tuning_reports_trials_kernels_and_best_time(tuned):
    lines = tuned[3]["progress_lines"]
    assert lines[0] == "tuning: timing the default schedule of 1 kernels"
    final = [line for line in lines if line.startswith("tuning: 6/6 trials")]
    assert len(final) == 1, lines
    assert re.search(r"kernels finished [01]/1; fused_lego_conv2d\w*: best \d+\.\d{3} ms",
                     final[0]), final[0]


def test_tuning_writes_records_and_a_manifest(tuned):
    _, _, log_dir, manifest = tuned
    assert manifest["trials"] == count_records(log_dir) >= 1
    assert manifest["model"] == "tiny" and manifest["batch"] == 1
    on_disk = json.loads((log_dir / MANIFEST).read_text())
    assert on_disk["compute_version"] == COMPUTE_VERSION
    assert on_disk["tvm_version"] and on_disk["target"] and on_disk["date"]


def test_compile_applies_the_log_and_stays_exact(tuned):
    model, x, log_dir, _ = tuned
    compiled = lego_tvm.compile(model, (x,), tuning_logs=str(log_dir))
    assert any(name.startswith("fused_lego_conv2d") for name in compiled.report.tuned_kernels)
    assert "kernels scheduled from tuning logs" in str(compiled.report)
    assert_matches_torch(compiled, model, (x,))


def test_rerun_resumes_instead_of_starting_over(tuned):
    model, x, log_dir, manifest = tuned
    again = lego_tvm.tune(model, (x,), log_dir, trials=manifest["trials"], model_name="tiny")
    assert again["trials"] == manifest["trials"]          # nothing left to do


def _tasks_and_database(model, x, log_dir):
    from tvm.s_tir import meta_schedule as ms

    target = resolve_target(None)
    tasks = kernel_tasks(model, (x,), target)
    return target, tasks, ms.database.JSONDatabase(work_dir=str(log_dir), allow_missing=False)


def test_the_search_starts_from_the_default_schedule(tuned):
    model, x, log_dir, _ = tuned
    target, tasks, database = _tasks_and_database(model, x, log_dir)
    assert tasks
    recorded = {_trace_key(r.trace) for r in database.get_all_tuning_records()}
    for task in tasks:
        default = default_records.default_schedule(task.dispatched[0], target)
        assert _trace_key(default.trace) in recorded, f"{task.task_name}: default not seeded"


def test_a_record_slower_than_the_default_gives_way_to_it(tuned, tmp_path):
    """A record of the unscheduled kernel (naive serial loops, far slower) that claims the
    best time: the check times it against the default and makes the database return the
    default; compile then runs the default schedule, exactly."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    model, x, log_dir, _ = tuned
    copy = tmp_path / "log"
    shutil.copytree(log_dir, copy)
    target, tasks, database = _tasks_and_database(model, x, copy)
    task = tasks[0]
    workload = database.commit_workload(task.dispatched[0])
    fastest = min(r.run_secs[0].value for r in database.get_all_tuning_records())
    naive = s_tir.Schedule(task.dispatched[0])
    naive.get_sblock(LEGO_BLOCK)            # a database ignores a record with an empty trace
    naive = naive.trace
    database.commit_tuning_record(ms.database.TuningRecord(
        naive, workload, [fastest / 10], target,
        ms.arg_info.ArgInfo.from_prim_func(task.dispatched[0]["main"])))
    assert _trace_key(database.get_top_k(workload, 1)[0].trace) == _trace_key(naive)

    with target:
        verdicts = default_records.check([task], database, target, rounds=2)
    assert [(v.kernel, v.kept) for v in verdicts] == [(task.task_name, "default")]
    assert verdicts[0].tuned_ms > verdicts[0].default_ms
    default = default_records.default_schedule(task.dispatched[0], target)
    best = ms.database.JSONDatabase(work_dir=str(copy), allow_missing=False).get_top_k(
        workload, 1)[0]
    assert _trace_key(best.trace) == _trace_key(default.trace)
    assert best.run_secs[0].value < fastest / 10
    # The best record is now the default, so a second check has nothing to time.
    with target:
        assert default_records.check([task], database, target, rounds=2) == []
    compiled = lego_tvm.compile(model, (x,), tuning_logs=str(copy))
    assert_matches_torch(compiled, model, (x,))


@pytest.mark.parametrize("field,value,message", [
    ("tvm_version", "0.1.0", "TVM version '0.1.0'"),
    ("target", '{"kind":"llvm","mcpu":"other"}', "made for target"),
    ("compute_version", 999, "compute version 999"),
    # On Zen 4 a bf16 log's target is the fp32 one: the precision alone tells them apart.
    ("precision", "bf16", "made for precision 'bf16', not 'fp32'"),
])
def test_log_for_something_else_is_refused(tuned, tmp_path, field, value, message):
    model, x, log_dir, _ = tuned
    copy = tmp_path / "log"
    shutil.copytree(log_dir, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest[field] = value
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(TuningLogError, match=message):
        lego_tvm.compile(model, (x,), tuning_logs=str(copy))


def test_truncated_log_is_refused(tuned, tmp_path):
    model, x, log_dir, _ = tuned
    copy = tmp_path / "log"
    shutil.copytree(log_dir, copy)
    records = copy / DATABASE_FILES[1]
    records.write_text(records.read_text()[:-40])
    with pytest.raises(TuningLogError, match="corrupt or truncated"):
        lego_tvm.compile(model, (x,), tuning_logs=str(copy))


def test_folder_without_manifest_is_refused(tmp_path):
    with pytest.raises(TuningLogError, match="manifest.json is missing"):
        lego_tvm.compile(lego_tvm.LegoConv2d(4, 4, 3).eval(), torch.randn(1, 4, 4, 4),
                         tuning_logs=str(tmp_path))


def test_winograd_kernels_are_tuned_and_applied(tmp_path):
    """``winograd=True`` tunes the Winograd forms too; compile applies their records and the
    output stays within the tolerance."""
    model = torch.nn.Sequential(lego_tvm.LegoConv2d(16, 32, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 16, 12, 12)
    tasks = kernel_tasks(model, (x,), resolve_target(None), winograd=True)
    names = sorted(t.task_name for t in tasks)
    assert names == ["fused_lego_conv2d", "fused_lego_conv2d_winograd2",
                     "fused_lego_conv2d_winograd4"], names
    manifest = lego_tvm.tune(model, (x,), tmp_path, trials=9, model_name="tiny", seed=0,
                             winograd=True, progress=None)
    assert {v["kernel"] for v in manifest.get("checked", [])} <= set(names)
    compiled = lego_tvm.compile(model, (x,), tuning_logs=str(tmp_path), compute_once="winograd")
    assert compiled.report.tuned_kernels == ["fused_lego_conv2d_winograd2"]   # 12x12: F(2x2)
    assert_matches_torch(compiled, model, (x,))


@pytest.mark.skipif(not host_has_bf16(), reason="this CPU lacks AVX512_BF16")
def test_bf16_kernels_with_flat_maps_are_tuned_and_applied(tmp_path):
    """A 1x1 bf16 kernel keeps its maps pixels innermost (AMX tiles, or vdpbf16ps on vectors
    of pixels, whose sampled register tiles must divide a task's vectors)."""
    model = torch.nn.Sequential(lego_tvm.LegoConv2d(64, 64, 1, 2, 0.5), torch.nn.ReLU()).eval()
    x = torch.randn(1, 64, 8, 8)
    manifest = lego_tvm.tune(model, (x,), tmp_path, trials=8, model_name="tiny", seed=0,
                             precision="bf16", progress=None)
    assert manifest["precision"] == "bf16"
    compiled = lego_tvm.compile(model, (x,), tuning_logs=str(tmp_path), precision="bf16")
    assert compiled.report.tuned_kernels == ["fused_lego_conv2d_bf16"]
    assert compiled.report.layers[0].spec.flat_pixels
    assert 0 < error_against_torch(compiled, model, (x,)) < BF16_TOLERANCE


@pytest.mark.skipif(not host_has_bf16(), reason="this CPU lacks AVX512_BF16")
def test_bf16_kernels_are_tuned_and_applied(tmp_path):
    """``precision="bf16"`` tunes the bf16 kernels (vdpbf16ps, tensorized in every sampled
    schedule); compile in bf16 applies their records, compile in fp32 does not."""
    model = torch.nn.Sequential(lego_tvm.LegoConv2d(32, 32, 3, 2, 0.5), torch.nn.ReLU()).eval()
    x = torch.randn(1, 32, 6, 6)
    [task] = kernel_tasks(model, (x,), with_host_bf16(resolve_target(None)), precision="bf16")
    assert task.task_name == "fused_lego_conv2d_bf16"
    manifest = lego_tvm.tune(model, (x,), tmp_path, trials=6, model_name="tiny", seed=0,
                             precision="bf16", progress=None)
    assert manifest["precision"] == "bf16"
    assert codegen.target_has_features(BF16_FEATURE, Target(manifest["target"]))
    compiled = lego_tvm.compile(model, (x,), tuning_logs=str(tmp_path), precision="bf16")
    assert compiled.report.tuned_kernels == ["fused_lego_conv2d_bf16"]
    error = error_against_torch(compiled, model, (x,))
    assert 0 < error < BF16_TOLERANCE
    with pytest.raises(TuningLogError, match="made for"):    # for bf16, not fp32
        lego_tvm.compile(model, (x,), tuning_logs=str(tmp_path))
