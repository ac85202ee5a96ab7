import os
import subprocess
import sys
import textwrap

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

def run_exported_without_torch(path: str, x: np.ndarray, folder) -> np.ndarray:
    """Load the model exported at ``path`` with ``lego_tvm.load`` in a fresh process where
    torch cannot be imported, run it on ``x`` and return its output. Runs outside the
    checkout: the installed package (the checkout's lego_tvm lacks the schedules/ mapping
    that installing adds)."""
    np.save(os.path.join(folder, "x.npy"), x)
    out = os.path.join(folder, "out.npy")
    script = NO_TORCH + textwrap.dedent(f"""
        import numpy as np
        import lego_tvm
        model = lego_tvm.load({str(path)!r})
        np.save({out!r}, model(np.load({os.path.join(folder, 'x.npy')!r})))
        assert "torch" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, cwd=folder)
    return np.load(out)


# The tests' fp32 bound is the library's: max |error| / max |reference|.
from lego_tvm.check import error_against_torch  # noqa: E402
from lego_tvm.support.accuracy import TOLERANCE  # noqa: E402,F401 - the tests import it from here


def cuda_source(executable) -> str:
    """The CUDA source of a module built for a GPU: exactly one CUDA module among its imports."""
    modules, sources = [executable.mod], []
    while modules:
        module = modules.pop()
        if module.kind == "cuda":
            sources.append(module.inspect_source("cuda"))
        modules += list(module.imports)
    assert sources, "the built module holds no CUDA module: nothing would run on the GPU"
    assert len(sources) == 1, f"{len(sources)} CUDA modules in one build"
    return sources[0]


def assert_matches_torch(compiled, model, inputs):
    err = error_against_torch(compiled, model, inputs)
    assert err <= TOLERANCE, f"max relative error {err:.3e} > {TOLERANCE}"
    return err


def assert_same_as_torch(compiled, model, inputs):
    """NaN where PyTorch has NaN, infinities alike, position by position; the finite values
    within the tolerance."""
    from lego_tvm.support.accuracy import max_relative_error
    with torch.no_grad():
        expected = model(*inputs).numpy()
    got = np.asarray(compiled(*[t.numpy() for t in inputs]))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    finite = np.isfinite(expected)
    if finite.any():
        assert max_relative_error(got[finite], expected[finite]) <= TOLERANCE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
