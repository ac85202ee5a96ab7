import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))   # tests/reference_lego.py

# Prepended to a script run in a fresh process: torch cannot be imported there (TVM itself
# would import it when it is installed), as on a machine with only TVM and numpy.
NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not allowed here")
sys.meta_path.insert(0, NoTorch())
"""

# A tight fp32 bound on max |error| / max |reference| (the acceptance criterion).
TOLERANCE = 1e-4


def relative_error(out, reference) -> float:
    out, reference = np.asarray(out), np.asarray(reference)
    scale = np.abs(reference).max()
    assert scale > 0, "reference output is all zeros: the check would prove nothing"
    return float(np.abs(out - reference).max() / scale)


def assert_matches_torch(compiled, model, inputs):
    with torch.no_grad():
        reference = model(*inputs).numpy()
    out = compiled(*[t.numpy() for t in inputs])
    assert out.shape == reference.shape
    err = relative_error(out, reference)
    assert err <= TOLERANCE, f"max relative error {err:.3e} > {TOLERANCE}"
    return err


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
