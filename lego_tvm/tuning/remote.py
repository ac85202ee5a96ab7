"""Devices reached over TVM RPC (an ARM board, a phone): tuning and timing there, as TVM
users do. On the board: ``python -m tvm.exec.rpc_server --tracker HOST:9190 --key KEY``
(or without a tracker, ``--host 0.0.0.0 --port 9090``); see the README.

What the remote CPU really is comes from its Linux sysfs, read through the RPC server: a
server running under an emulator (qemu-user) reports the host's CPU, and everything
measured on it is labelled emulated.
"""
from __future__ import annotations

from dataclasses import dataclass

# MIDR_EL1 part numbers of Arm Ltd. (implementer 0x41) cores.
ARM_PARTS = {0xD03: "Cortex-A53", 0xD04: "Cortex-A35", 0xD05: "Cortex-A55",
             0xD07: "Cortex-A57", 0xD08: "Cortex-A72", 0xD09: "Cortex-A73",
             0xD0A: "Cortex-A75", 0xD0B: "Cortex-A76", 0xD0C: "Neoverse N1",
             0xD0D: "Cortex-A77", 0xD40: "Neoverse V1", 0xD41: "Cortex-A78",
             0xD44: "Cortex-X1", 0xD46: "Cortex-A510", 0xD47: "Cortex-A710",
             0xD48: "Cortex-X2", 0xD49: "Neoverse N2", 0xD4F: "Neoverse V2"}
_SYSFS_CPU = "/sys/devices/system/cpu"


class RemoteError(ConnectionError):
    """The RPC tracker or server cannot be reached, or gave no device."""


@dataclass(frozen=True)
class Remote:
    """An RPC server: reached through a tracker with a device ``key``, or directly."""
    host: str
    port: int
    key: str | None = None       # set: (host, port) is a tracker; None: it is the server
    timeout: int = 600           # seconds a session may last

    @classmethod
    def parse(cls, tracker: str | None = None, key: str | None = None,
              server: str | None = None) -> Remote | None:
        """From ``--rpc-tracker HOST:PORT --rpc-key KEY`` or ``--rpc-server HOST:PORT``."""
        if tracker and server:
            raise ValueError("give an RPC tracker or an RPC server, not both")
        if tracker and not key:
            raise ValueError("an RPC tracker needs the device key (--rpc-key) the board "
                             "registered with")
        address = tracker or server
        if not address:
            return None
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"RPC address {address!r} is not HOST:PORT")
        return cls(host, int(port), key if tracker else None)

    def __str__(self) -> str:
        return (f"device {self.key!r} at the RPC tracker {self.host}:{self.port}" if self.key
                else f"the RPC server at {self.host}:{self.port}")

    def connect(self, _config=None):
        """An RPC session (``_config``: MetaSchedule's RPCConfig, unused)."""
        from tvm import rpc

        try:
            if self.key:
                return rpc.connect_tracker(self.host, self.port).request(
                    self.key, priority=1, session_timeout=self.timeout)
            return rpc.connect(self.host, self.port, session_timeout=self.timeout)
        except Exception as err:  # noqa: BLE001 - TVM raises RPCError, TVMError, OSError
            last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise RemoteError(f"cannot reach {self}: {last}") from None

    def runner(self):
        """MetaSchedule's RPC runner on this device, with lego-tvm's argument filling."""
        from tvm.s_tir import meta_schedule as ms

        from . import measure

        return ms.runner.RPCRunner(
            # The config is required but unused: sessions come from self.connect.
            ms.runner.RPCConfig(tracker_host=self.host, tracker_port=self.port,
                                tracker_key=self.key or "direct",
                                session_timeout_sec=self.timeout),
            ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0),
            f_create_session=self.connect, f_alloc_argument=measure.alloc_remote_arguments)


def describe(session, target_arch: str) -> dict:
    """``{"hardware": ..., "emulated": bool | None}`` of the CPU behind ``session``."""
    modalias = _read(session, f"{_SYSFS_CPU}/modalias")   # "cpu:type:aarch64:feature:..."
    if modalias is None or not modalias.startswith("cpu:type:"):
        return {"hardware": "unknown (the RPC server did not show its CPU)", "emulated": None}
    arch = modalias.split(":")[2].split(",")[0]
    if arch != target_arch:
        return {"hardware": f"{target_arch} emulated on a {arch} machine (timings are "
                            "meaningless)", "emulated": True}
    midr = _read(session, f"{_SYSFS_CPU}/cpu0/regs/identification/midr_el1")
    name = arch
    if midr:
        value = int(midr.strip(), 16)
        part, implementer = (value >> 4) & 0xFFF, value >> 24
        name = ARM_PARTS.get(part, f"{arch} CPU part 0x{part:03x}") if implementer == 0x41 \
            else f"{arch} CPU (implementer 0x{implementer:02x}, part 0x{part:03x})"
    return {"hardware": name, "emulated": False}


def _read(session, path: str) -> str | None:
    try:
        data = bytes(session.get_function("tvm.rpc.server.download")(path))
    except Exception:  # noqa: BLE001 - missing file or a server without this function
        return None
    return data.rstrip(b"\0").decode(errors="replace").strip()
