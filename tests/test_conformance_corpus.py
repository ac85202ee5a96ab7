"""The conformance corpus (``corpus.py``) in CI: every model at batch 1, every architecture
also with a batch chosen at call time. ``LEGO_TVM_CORPUS=all`` runs every mode of every
model (as ``python tests/corpus.py`` does, with counts)."""
import os

import pytest

from corpus import ARCHITECTURES, MODES, cases, check

ALL = os.environ.get("LEGO_TVM_CORPUS") == "all"
CHECKS = [(name, mode) for name in cases() for mode in MODES
          if ALL or mode == "batch 1"
          or (mode == "dynamic batch" and name.split(" with ")[0] in ARCHITECTURES)]


@pytest.mark.parametrize("name,mode", CHECKS, ids=[f"{n} ({m})" for n, m in CHECKS])
def test_lego_tvm_matches_torch_or_refuses_what_plain_tvm_gets_wrong(name, mode):
    result = check(name, mode)
    assert result.verdict != "LEGO-TVM FAILURE", result
