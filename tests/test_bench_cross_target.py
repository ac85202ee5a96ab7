"""The cross-target report: measured on the host, estimated for ARM (both sides through the
same static model, layer by layer), compiled-but-unmeasured for CUDA without a GPU."""
import matplotlib
import pytest
import tvm

from lego_tvm.bench.cross_target import (MEASURED, UNMEASURED, bench_targets,
                                         format_target_table, plot_targets)
from lego_tvm.bench.estimate import LABEL

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend


@pytest.fixture(scope="module")
def rows():
    return bench_targets(["lego_vgg16"], ["host", "arm-cortex-a72", "cuda-h100"], progress=None)


def test_each_target_says_how_its_numbers_were_obtained(rows):
    host, arm, cuda = rows
    assert host["basis"] == MEASURED and host["lego_ms"] > 0 and host["dense_ms"] > 0
    assert host["speedup"] == pytest.approx(host["dense_ms"] / host["lego_ms"])
    assert arm["basis"] == LABEL and arm["core_model"] == "cortex-a72"
    assert arm["speedup"] == pytest.approx(arm["dense_ms"] / arm["lego_ms"])
    # VGG-16's 14 Lego layers at o=2, ratio 0.5 do half a dense conv's compute-once work.
    assert len(arm["layers"]) == 14
    assert all(1.5 < p["speedup"] < 2.5 for p in arm["layers"]), arm["layers"]
    assert host["correctness"].startswith("matches PyTorch, max relative error")
    # CI sets the emulator up (.ci/run): the A72 build runs there and is checked.
    assert arm["correctness"].startswith("run under emulation (cortex-a72): matches PyTorch")
    if not tvm.cuda().exist:
        assert cuda == {"model": "lego_vgg16", "target": "cuda-h100", "basis": UNMEASURED,
                        "correctness": "compiled; not run here"}


def test_the_table_and_plot_label_estimates(rows):
    table = format_target_table(rows)
    assert f"| lego_vgg16 | arm-cortex-a72 | {LABEL} |" in table
    assert "ms, lower bound" in table and f"| lego_vgg16 | host | {MEASURED} |" in table
    figure, ax = plt.subplots()
    plot_targets(ax, rows)
    assert any("(estimated)" in t.get_text() for t in ax.texts)
    plt.close(figure)


def test_a_board_over_rpc_times_both_models_and_an_emulated_one_says_so():
    from emulator import rpc_server
    from lego_tvm.tuning.remote import Remote

    with rpc_server() as port:
        [row] = bench_targets(["lego_vgg16"], ["arm-cortex-a72"], progress=None,
                              remote=Remote.parse(server=f"127.0.0.1:{port}"))
    assert row["basis"].startswith("EMULATED device (") and "say nothing about speed" in \
        row["basis"]
    assert row["device"]["emulated"] is True
    assert row["lego_ms"] > 0 and row["dense_ms"] > 0
    error = float(row["correctness"].rsplit(" ", 1)[1])
    assert row["correctness"].startswith("on the device: max relative error") and error <= 1e-4
    figure, ax = plt.subplots()
    plot_targets(ax, [row])
    assert not ax.patches             # an emulator's timings are not charted as speed
    plt.close(figure)
