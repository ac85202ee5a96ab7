"""Default schedules: the fused operator is parallel and vectorized; nothing stays naive."""
import pytest
import torch
from tvm import tirx

from lego_tvm.backend import pipeline
from lego_tvm.op.fused_op import spec_of
from lego_tvm.schedules import cpu_gemv
from lego_tvm.schedules.lego_cpu import default_config
from lego_tvm.schedules.x86 import AVX2
from lego_tvm.support.targets import host_target


def loop_kinds(func) -> set:
    """Loop kinds as TVMScript prints them (TVM 0.27 has no Python TIR visitor)."""
    text = func.script()
    return {kind for kind in ("parallel", "vectorized", "unroll") if f"T.{kind}(" in text}


@pytest.mark.parametrize("size", [12, 2])     # fused stages / stage by stage
def test_every_primfunc_is_scheduled_and_the_lego_kernel_is_parallel_and_vectorized(size):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        __import__("lego_tvm").LegoConv2d(16, 32, 3), torch.nn.MaxPool2d(2)).eval()
    x = torch.randn(1, 3, size, size)
    target = host_target()
    mod, report = pipeline.import_and_fuse(model, (x,), target)
    assert len(report.layers) == 1
    assert [c.folded for c in report.dense_convs] == [["bias_add", "batch_norm", "relu"]]
    mod, tuned, fallbacks = pipeline.schedule(pipeline.lower(mod, target), target)
    assert fallbacks == []
    assert tuned == []
    fused = [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and spec_of(f)]
    assert sorted(spec_of(f).splits for f in fused) == [1, 2]     # the dense conv and the Lego
    for func in fused:
        assert {"parallel", "vectorized", "unroll"} <= loop_kinds(func)
    lego = next(f for f in fused if spec_of(f).splits == 2)
    assert default_config(spec_of(lego), 2, AVX2).fuse_stages == (size == 12)



@pytest.mark.parametrize("batch", [1, 3, 16])
def test_a_classifier_at_a_small_batch_reads_its_weights_row_by_row(batch):
    """StreamingGemv: ``x @ w`` with w ``[inputs, outputs]`` (a Linear's weight after the
    import folds its transpose) at a small batch is summed in parallel stretches of rows (an
    rfactor block); a large batch keeps the tiled schedule. Both match PyTorch."""
    import lego_tvm
    from lego_tvm.support.accuracy import TOLERANCE, max_relative_error

    torch.manual_seed(0)
    model, x = torch.nn.Linear(512, 200).eval(), torch.randn(batch, 512)
    target = host_target()
    mod, _ = pipeline.import_and_fuse(model, (x,), target)
    mod, _, fallbacks = pipeline.schedule(pipeline.lower(mod, target), target)
    scripts = [f.script() for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert fallbacks == []
    assert any("_rf" in s for s in scripts) == (batch <= cpu_gemv.MAX_BATCH)
    compiled = lego_tvm.compile(model, (x,), tuning_logs=None)
    with torch.no_grad():
        assert max_relative_error(compiled(x.numpy()), model(x).numpy()) < TOLERANCE


def test_weights_read_by_column_keep_the_tiled_schedule():
    from tvm import te

    x = te.placeholder((1, 512), "float32", name="x")
    for shape, read in (((200, 512), lambda w, j, k: w[j, k]),      # by column: refused
                        ((512, 200), lambda w, j, k: w[k, j])):     # by row
        w = te.placeholder(shape, "float32", name="w")
        k = te.reduce_axis((0, 512), name="k")
        out = te.compute((1, 200), lambda b, j: te.sum(x[b, k] * read(w, j, k), axis=k))
        func = te.create_prim_func([x, w, out])
        applied = cpu_gemv.StreamingGemv().apply(func, host_target(), False)
        assert (applied is not None) == (shape == (512, 200))
