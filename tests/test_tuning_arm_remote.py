"""Remote tuning and benchmarking the way users drive a board: an aarch64 RPC server (here
under the emulator, on 127.0.0.1) registered with an RPC tracker, or reached directly."""
import json
import os

import pytest
import torch

import lego_tvm
from conftest import TOLERANCE
from emulator import rpc_server
from lego_tvm.cli import main
from lego_tvm.tuning.remote import Remote, RemoteError
from lego_tvm.tuning.logs import count_records, read_manifest

KEY = "qemu-a72"


@pytest.fixture(scope="module")
def tracker():
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=9190, port_end=9299, silent=True)
    with rpc_server(tracker.port, KEY):
        yield tracker.port
    tracker.terminate()


def test_tune_on_a_device_behind_a_tracker_then_compile_applies_the_records(tracker, tmp_path):
    layer = lego_tvm.LegoConv2d(16, 16, 3, 2, 0.5).eval()
    x = torch.randn(1, 16, 8, 8)
    program_path = str(tmp_path / "layer.pt2")
    torch.export.save(torch.export.export(layer, (x,)), program_path)
    log_dir = str(tmp_path / "log")
    main(["tune", program_path, "--target", "arm-cortex-a72", "--trials", "4", "--log-dir",
          log_dir, "--rpc-tracker", f"127.0.0.1:{tracker}", "--rpc-key", KEY])
    assert count_records(log_dir) >= 2
    manifest = read_manifest(log_dir)
    assert manifest["emulated"] is True and "emulated" in manifest["hardware"]
    assert '"mcpu":"cortex-a72"' in manifest["target"]

    compiled = lego_tvm.compile(layer, x, target="arm-cortex-a72", tuning_logs=log_dir)
    assert compiled.report.tuned_kernels == ["fused_lego_conv2d"]


def test_bench_on_a_server_reached_directly_labels_emulated_numbers(tmp_path):
    out = str(tmp_path / "out")
    with rpc_server() as port:
        main(["bench", "--models", "lego_vgg16", "--target", "arm-cortex-a72", "--repeat", "2",
              "--rpc-server", f"127.0.0.1:{port}", "--out-dir", out])
    with open(os.path.join(out, "bench.json")) as f:
        result = json.load(f)
    assert result["machine"]["emulated"] is True
    (model,) = result["models"]
    assert set(model["median_ms"]) == {"lego_tvm", "tvm_no_pass"}
    assert all(ms > 0 for ms in model["median_ms"].values())
    assert model["max_rel_error"] <= TOLERANCE
    with open(os.path.join(out, "bench.md")) as f:
        assert "EMULATED" in f.read()
    assert os.path.getsize(os.path.join(out, "bench.png")) > 0


def test_remote_addresses_and_unreachable_devices_give_clear_errors():
    with pytest.raises(ValueError, match="needs the device key"):
        Remote.parse(tracker="127.0.0.1:9190")
    with pytest.raises(ValueError, match="not HOST:PORT"):
        Remote.parse(server="localhost")
    with pytest.raises(RemoteError, match="cannot reach the RPC server at 127.0.0.1:9"):
        Remote("127.0.0.1", 9).connect()
