"""The aarch64 emulator that tools/arm-emulator.sh sets up (qemu-user + arm64 CPython + the
aarch64 TVM wheel), for tests that run ARM builds."""
import contextlib
import os
import signal
import socket
import subprocess
import time

import pytest

from lego_tvm.bench.emulator import PYTHON, emulated_env, emulator_ready, run_exported


def require_emulator() -> str:
    if not emulator_ready():
        pytest.fail(f"the aarch64 emulator is not set up ({PYTHON} is missing): run "
                    "`bash tools/arm-emulator.sh setup` (CI's .ci/run does)", pytrace=False)
    return PYTHON


def run_exported_on_arm(folder: str, timeout: int = 600) -> str:
    """Run every exported library in ``folder`` under the emulator (an emulated Cortex-A72)."""
    require_emulator()
    return run_exported(folder, timeout=timeout)


@contextlib.contextmanager
def rpc_server(tracker_port: int | None = None, key: str = "qemu-a72"):
    """An RPC server on 127.0.0.1 running under the emulator, as on a board; registered
    with the tracker at ``tracker_port`` under ``key``, or reached directly. Yields its port."""
    port = _free_port()
    command = [require_emulator(), "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
               "--port", str(port), "--port-end", str(port + 1)]
    if tracker_port is not None:
        command += ["--tracker", f"127.0.0.1:{tracker_port}", "--key", key]
    server = subprocess.Popen(command, env=emulated_env(), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_until_serving(server, port, tracker_port, key)
        yield port
    finally:
        os.killpg(server.pid, signal.SIGKILL)   # the server and the workers it forked
        server.wait(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(server, port, tracker_port, key, timeout=180):
    from tvm import rpc

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert server.poll() is None, f"emulated RPC server died: {server.stderr.read()[-2000:]}"
        if tracker_port is not None:
            summary = rpc.connect_tracker("127.0.0.1", tracker_port).summary()
            if summary.get("queue_info", {}).get(key, {}).get("free", 0) > 0:
                return
        else:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
        time.sleep(1)
    raise TimeoutError("the emulated RPC server did not start in time")
