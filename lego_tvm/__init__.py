"""lego-tvm: compile LegoNet models with Apache TVM.

``lego_tvm.compile(model, example_inputs, target=None)`` is the one call to learn;
``lego_tvm.load(path)`` loads an exported model with the TVM runtime alone;
``lego_tvm.estimate(model, inputs, target)`` estimates a CPU target's speed without it.
Attributes are imported lazily so that ``load`` never pulls in PyTorch.
"""
from importlib import import_module

from .support.threads import no_spinning_workers, use_physical_cores

# Before any kernel runs: TVM's pool reads these settings once.
use_physical_cores()
no_spinning_workers()

_LAZY = {
    "compile": "compiler",
    "load": "runtime",
    "Model": "runtime",
    "LegoConv2d": "nn.lego_conv",
    "lego_vgg16": "nn.zoo",
    "lego_resnet50": "nn.zoo",
    "get_model": "nn.zoo",
    "fold_lego_to_dense": "nn.fold",
    "FuseLegoConv2d": "transform.fuse_conv2d",
    "tune": "tuning.search",
    "estimate": "bench.estimate",
}
__all__ = sorted(_LAZY)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'lego_tvm' has no attribute {name!r}")
