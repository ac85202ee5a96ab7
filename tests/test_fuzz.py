"""Differential fuzzing: random Lego layers and networks (tests/fuzz_cases.py), compiled and
compared with PyTorch on random inputs, and random near misses that must be left unfused
with their reason reported, and still compute the right thing.

Each compile packs many cases side by side (one compile costs seconds; a case adds a
fraction of that). A case counts only if its Lego layers were fused: the report must list
every one of them by module name. Environment:

- ``LEGO_FUZZ_CASES`` (default 500): how many random cases; ``LEGO_FUZZ_NEAR_MISSES``
  (default 44: four of each kind) how many near misses.
- ``LEGO_FUZZ_SEED`` (default 0): which cases; case seeds are ``SEED * 1_000_000 + i``.
- ``LEGO_FUZZ_CASE=<case seed>``: run that one case (a failure prints its seed).
"""
from __future__ import annotations

import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

import lego_tvm
from conftest import TOLERANCE
from lego_tvm.support.accuracy import max_relative_error
from fuzz_cases import NEAR_MISS_KINDS, Packed, build_case, draw_case, draw_near_miss

CASES = int(os.environ.get("LEGO_FUZZ_CASES", 500))
NEAR_MISSES = int(os.environ.get("LEGO_FUZZ_NEAR_MISSES", 44))
SEED = int(os.environ.get("LEGO_FUZZ_SEED", 0))
ONE_CASE = os.environ.get("LEGO_FUZZ_CASE")
PER_COMPILE = 100           # cases per compiled model: 100 ran 15% faster per case than 50
REPRODUCE = "reproduce one with LEGO_FUZZ_CASE=<seed> python -m pytest -q tests/test_fuzz.py"


def _batches(count: int) -> list[list[int]]:
    seeds = [int(ONE_CASE)] if ONE_CASE else [SEED * 1_000_000 + i for i in range(count)]
    return [seeds[i:i + PER_COMPILE] for i in range(0, len(seeds), PER_COMPILE)]


@dataclass
class Entry:
    """One case of a packed model and what the compiled model must show for it."""
    label: str
    module: torch.nn.Module
    inputs: tuple
    lego_layers: list[str] = field(default_factory=list)   # module names that must be fused
    reason: str | None = None                                # regex of its rejection, if any


def _error(out: np.ndarray, reference: np.ndarray) -> float:
    # A ReLU can zero a small output; then the compiled one must be exactly zero too.
    if not np.abs(reference).max() > 0:
        return 0.0 if not np.abs(out).max() > 0 else float("inf")
    return max_relative_error(out, reference)


def check(entries: list[Entry]) -> list[str]:
    """Compile ``entries`` as one model; what is wrong, per entry. When a failure cannot be
    told apart per entry (the compile fails, or the report does not line up), every entry
    is checked on its own."""
    # PyTorch's own convs, not oneDNN's: on hundreds of tiny new shapes oneDNN spends
    # seconds creating kernels (compile runs the model once too, to name the layers).
    with torch.backends.mkldnn.flags(enabled=False):
        return _check(entries)


def _check(entries: list[Entry]) -> list[str]:
    packed = Packed([e.module for e in entries], [len(e.inputs) for e in entries]).eval()
    inputs = [t for e in entries for t in e.inputs]
    try:
        compiled = lego_tvm.compile(packed, tuple(inputs), tuning_logs=None)
        outputs = compiled(*[t.numpy() for t in inputs])
    except Exception as err:  # noqa: BLE001 - any failure is a finding
        if len(entries) > 1:
            return [f for e in entries for f in _check([e])]
        return [f"{entries[0].label}: {type(err).__name__}: {err}"]
    report = compiled.report
    # Other forms may claim pieces of a near miss (a one-hot 1x1 merge conv alone is a
    # dense-folded Lego layer); the split-conv layers are the ones the cases decide.
    split_layers = [layer for layer in report.layers if layer.form == "split convs"]
    fused = {layer.name for layer in split_layers}
    reasons = [s.reason for s in report.skipped]
    expected_layers = sum(len(e.lego_layers) for e in entries)
    matched = _match_reasons([e.reason for e in entries if e.reason], reasons)
    if len(entries) > 1 and (len(split_layers) != expected_layers or not matched):
        return [f for e in entries for f in _check([e])]

    failures = []
    outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
    for k, entry in enumerate(entries):
        problems = [f"{name} not fused" for name in entry.lego_layers
                    if f"cases.{k}.{name}" not in fused]
        if len(entries) == 1 and len(split_layers) != expected_layers:
            problems.append(f"the report lists {len(split_layers)} split-conv Lego layers, "
                            f"expected {expected_layers}")
        if len(entries) == 1 and not matched:
            problems.append(f"rejections {reasons} do not match /{entry.reason}/")
        with torch.no_grad():
            references = entry.module(*entry.inputs)
        references = references if isinstance(references, list) else [references]
        errors = [_error(outputs.pop(0), r.numpy()) for r in references]
        if max(errors) > TOLERANCE:
            problems.append(f"max relative error {max(errors):.3e} > {TOLERANCE}")
        if problems:
            failures.append(f"{entry.label}: {'; '.join(problems)}")
    return failures


def _match_reasons(expected: list[str], reasons: list[str]) -> bool:
    """Each expected regex matches its own rejection, and no rejection is left over."""
    left = list(reasons)
    for pattern in expected:
        hit = next((r for r in left if re.search(pattern, r)), None)
        if hit is None:
            return False
        left.remove(hit)
    return not left


def check_batch(kind: str, seeds: list[int]) -> list[str]:
    """Build and check one batch of random cases ("cases") or near misses ("near")."""
    if kind == "cases":
        draws = [draw_case(seed) for seed in seeds]
        entries = [Entry(str(d), *build_case(d), d.lego_modules()) for d in draws]
    else:   # near-miss seeds walk through the kinds in turn, so every kind is drawn
        misses = [draw_near_miss(seed, NEAR_MISS_KINDS[seed % len(NEAR_MISS_KINDS)])
                  for seed in seeds]
        entries = [Entry(str(m), m.module, m.inputs, reason=m.reason) for m in misses]
    return check(entries)


CASE_BATCHES = [("cases", seeds) for seeds in _batches(CASES)]
NEAR_MISS_BATCHES = [("near", seeds) for seeds in _batches(NEAR_MISSES)]


@pytest.fixture(scope="module")
def running(request):
    """The selected batches, all started at once on one worker process per core (a compile
    runs on one core), so that each test below only waits for its own batch."""
    batches = [item.callspec.params["batch"] for item in request.session.items
               if item.module is request.module]
    context = multiprocessing.get_context("spawn")     # no fork of a process holding TVM threads
    with ProcessPoolExecutor(min(2, os.cpu_count() or 1, len(batches)), mp_context=context,
                             initializer=_one_thread) as pool:
        yield {(kind, seeds[0]): pool.submit(check_batch, kind, seeds) for kind, seeds in batches}


def _one_thread() -> None:
    os.environ["TVM_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def _assert_passes(running, batch) -> None:
    kind, seeds = batch
    failures = running[kind, seeds[0]].result()
    assert not failures, "\n".join(failures + [REPRODUCE])


def _name(batch) -> str:
    return f"{batch[0]}{batch[1][0]}-{batch[1][-1]}"


@pytest.mark.parametrize("batch", CASE_BATCHES, ids=_name)
def test_random_lego_networks_match_pytorch(running, batch):
    _assert_passes(running, batch)


@pytest.mark.parametrize("batch", NEAR_MISS_BATCHES, ids=_name)
def test_random_near_misses_are_left_alone_and_explained(running, batch):
    _assert_passes(running, batch)
