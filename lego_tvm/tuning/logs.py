"""Tuning logs: reading, checking and opening them (what ``compile`` needs of tuning).

A tuning log is a folder holding MetaSchedule's JSON database
(``database_workload.json``, ``database_tuning_record.json``) and a ``manifest.json`` that
says what produced it: TVM version, exact target, the fused operator's compute version,
model, batch, trials, date. A log is applied only when TVM version, target and compute
version all match; anything else is refused with the reason.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import tvm
from tvm.target import Target

from ..op.fused_op import COMPUTE_VERSION

log = logging.getLogger("lego_tvm")
MANIFEST = "manifest.json"
DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")


class TuningLogError(ValueError):
    """A tuning log that cannot be used: corrupt, truncated, or made for something else."""


def target_key(target: Target) -> str:
    """Folder name for a target's logs, e.g. ``x86_64-znver3-2c`` or ``cuda-sm_90``."""
    attrs = target.attrs
    if target.kind.name == "cuda":
        return f"cuda-{attrs.get('arch', 'unknown')}"
    arch = str(attrs.get("mtriple", "host")).split("-")[0]
    return f"{arch}-{attrs.get('mcpu', 'generic')}-{attrs.get('num-cores', 1)}c"


def identity(target: Target) -> dict:
    return {"tvm_version": tvm.__version__, "target": str(target),
            "compute_version": COMPUTE_VERSION}


def default_log_dir(model_name: str, target: Target, batch: int = 1, lego: bool = True,
                    layout: str = "NCHW", precision: str = "fp32") -> Path:
    """Where ``lego-tvm tune`` writes a log: ``tuning_logs/<target key>/<model>-b<batch>``,
    with ``-nopass`` for the model without the Lego pass, ``-nchwc`` for blocked layouts and
    ``-bf16`` for bf16 kernels."""
    return Path("tuning_logs", target_key(target),
                f"{model_name}-b{batch}{'' if lego else '-nopass'}"
                f"{'-nchwc' if layout == 'NCHWc' else ''}{'-bf16' if precision == 'bf16' else ''}")


def read_manifest(log_dir: str | Path) -> dict:
    path = Path(log_dir) / MANIFEST
    try:
        with open(path, errors="replace") as f:     # bytes that are not text: corrupt JSON
            manifest = json.load(f)
    except FileNotFoundError:
        raise TuningLogError(f"{log_dir} is not a lego-tvm tuning log: {MANIFEST} is missing") \
            from None
    except json.JSONDecodeError as err:
        raise TuningLogError(f"{path} is corrupt: {err}") from None
    if not isinstance(manifest, dict):
        raise TuningLogError(f"{path} is not a tuning-log manifest (a JSON object)")
    missing = [k for k in ("tvm_version", "target", "compute_version") if k not in manifest]
    if missing:
        raise TuningLogError(f"{path} lacks {', '.join(missing)}")
    return manifest


def write_manifest(log_dir: Path, manifest: dict) -> None:
    """Write ``manifest.json`` whole or not at all (a temporary file, then renamed)."""
    tmp = log_dir / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, log_dir / MANIFEST)


def check_log(log_dir: str | Path, target: Target, precision: str = "fp32") -> dict:
    """The manifest of ``log_dir`` if the log was made for this TVM, target, compute and
    precision; else ``TuningLogError`` saying what differs. The database files are checked
    too."""
    manifest = read_manifest(log_dir)
    want = identity(target)
    for key, label in (("tvm_version", "TVM version"), ("target", "target"),
                       ("compute_version", "fused-operator compute version")):
        if manifest[key] != want[key]:
            raise TuningLogError(f"tuning log {log_dir} was made for {label} {manifest[key]!r}, "
                                 f"not {want[key]!r}; it is not applied (retune with "
                                 "`lego-tvm tune`)")
    # On a CPU whose LLVM model has AVX512_BF16 (Zen 4) the bf16 and fp32 targets are the
    # same, so the precision is checked on its own.
    made_for = manifest.get("precision", "fp32")
    if made_for != precision:
        raise TuningLogError(f"tuning log {log_dir} was made for precision {made_for!r}, not "
                             f"{precision!r}; it is not applied (tune with `lego-tvm tune "
                             f"--precision {precision}`)")
    check_records(log_dir, complete=True)
    return manifest


def check_records(log_dir: str | Path, complete: bool) -> None:
    """Every line of the database files is JSON (an interrupted run can leave a truncated
    one); with ``complete``, both files exist."""
    for name in DATABASE_FILES:
        path = Path(log_dir) / name
        if not path.exists():
            if complete:
                raise TuningLogError(f"tuning log {log_dir} is incomplete: {name} is missing")
            continue
        with open(path, errors="replace") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        json.loads(line)
                    except json.JSONDecodeError as err:
                        raise TuningLogError(f"{path} line {number} is corrupt or truncated "
                                             f"({err.msg}); delete the line or retune") from None


def open_database(log_dirs: list[str | Path], target: Target, strict: bool,
                  precision: str = "fp32"):
    """A MetaSchedule database over the logs in ``log_dirs`` that match ``target`` and
    ``precision``.

    ``strict``: a log that does not match raises; otherwise it is skipped with a log line.
    Returns None when no log applies.
    """
    from tvm.s_tir import meta_schedule as ms

    databases = []
    for log_dir in log_dirs:
        try:
            check_log(log_dir, target, precision)
        except TuningLogError as err:
            if strict:
                raise
            log.info("lego-tvm: %s", err)
            continue
        register_intrinsics(log_dir)
        try:
            databases.append(ms.database.JSONDatabase(work_dir=str(log_dir),
                                                      allow_missing=False))
        except Exception as err:  # noqa: BLE001 - TVM raises generic errors on bad records
            raise TuningLogError(f"tuning log {log_dir} cannot be read by MetaSchedule: "
                                 f"{str(err).splitlines()[-1]}") from None
    if not databases:
        return None
    return databases[0] if len(databases) == 1 else ms.database.UnionDatabase(*databases)


def register_intrinsics(log_dir: str | Path) -> None:
    """Make the shape-specific tensor intrinsics (bf16 on AMX) the log's records name, so
    that MetaSchedule can read them."""
    from ..schedules import x86_amx, x86_amx_flat

    path = Path(log_dir) / DATABASE_FILES[1]
    if path.exists():
        text = path.read_text(errors="replace")
        x86_amx.register_intrinsics_named_in(text)
        x86_amx_flat.register_intrinsics_named_in(text)


def shipped_logs(target: Target, lego_pass: bool | None = None) -> list[Path]:
    """The logs installed with lego-tvm for this target (``tuning_logs/<target key>/*``);
    with ``lego_pass`` given, only those tuned with (True) or without (False) the pass."""
    from importlib.resources import files

    folder = Path(str(files("lego_tvm.tuning_logs"))) / target_key(target)
    logs = sorted(p.parent for p in folder.glob(f"*/{MANIFEST}")) if folder.is_dir() else []
    if lego_pass is None:
        return logs
    return [d for d in logs if _manifest_or_none(d).get("lego_pass", True) == lego_pass]


def _manifest_or_none(log_dir: Path) -> dict:
    try:
        return read_manifest(log_dir)
    except TuningLogError:
        return {}


def count_records(log_dir: str | Path) -> int:
    path = Path(log_dir) / DATABASE_FILES[1]
    if not path.exists():
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.strip())
