"""ONNX -> Relax: a Lego model that arrives as an ``.onnx`` file or an ``onnx.ModelProto``
(``torch.onnx.export``, either exporter, or another framework's dense-folded export).

TVM 0.27's ``relax.frontend.onnx.from_onnx`` translates it, with the weights as constants;
the Lego pass then finds the Lego layers as it does in a PyTorch import (measured: all 14
layers of the zoo's ``lego_vgg16``, exported by either exporter, as Lego modules or
dense-folded, and the authors' module). Needs the ``onnx`` package (``lego-tvm[onnx]``).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import tvm
from tvm import relax

from .pytorch import ModelImportError

FLOAT = 1      # onnx.TensorProto.FLOAT


def is_onnx(model) -> bool:
    """An ``.onnx`` path or an ``onnx.ModelProto``."""
    if isinstance(model, (str, os.PathLike)):
        return str(model).endswith(".onnx")
    return type(model).__name__ == "ModelProto"


def load_onnx(model):
    """The ``onnx.ModelProto`` of a path or a proto; ``ModelImportError`` says what is wrong."""
    try:
        import onnx
    except ImportError:
        raise ModelImportError("reading an ONNX model needs the onnx package: "
                               "pip install 'lego-tvm[onnx]' (or pip install onnx)") from None
    if not isinstance(model, (str, os.PathLike)):
        return model
    if not os.path.isfile(model):
        raise ModelImportError(f"{model} does not exist")
    try:
        return onnx.load(str(model))
    except Exception as err:  # noqa: BLE001 - protobuf raises several error types
        raise ModelImportError(f"{model} is not an ONNX model: {type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''}") from None


def example_inputs(proto, batch: int | None = None) -> tuple:
    """Random float32 inputs shaped as the model's inputs say; a dimension the file leaves
    open must be the first (the batch) with ``batch`` given, or come from example inputs."""
    graph_inputs = _graph_inputs(proto)
    inputs = []
    for value in graph_inputs:
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in value.type.tensor_type.shape.dim]
        if dims and dims[0] is None and batch is not None:
            dims[0] = batch
        if None in dims:
            shape = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                     for d in value.type.tensor_type.shape.dim]
            raise ModelImportError(f"ONNX input {value.name} has shape {shape}: give "
                                   "example_inputs (or --batch on the command line) to fix "
                                   "the open dimensions")
        inputs.append(torch.randn(*dims))
    return tuple(inputs)


def onnx_to_relax(proto, inputs: tuple) -> tvm.IRModule:
    """Translate with the inputs' shapes, weights folded in as constants."""
    from tvm.relax.frontend.onnx import from_onnx

    graph_inputs = _graph_inputs(proto)
    if len(inputs) != len(graph_inputs):
        raise ModelImportError(f"the ONNX model takes {len(graph_inputs)} input(s) "
                               f"({', '.join(i.name for i in graph_inputs)}), "
                               f"{len(inputs)} example input(s) given")
    for value, tensor in zip(graph_inputs, inputs):
        if value.type.tensor_type.elem_type != FLOAT or tensor.dtype != torch.float32:
            raise ModelImportError(f"ONNX input {value.name} is not float32; lego-tvm compiles "
                                   "float32 models")
    shapes = {value.name: list(tensor.shape) for value, tensor in zip(graph_inputs, inputs)}
    try:
        mod = from_onnx(proto, shape_dict=shapes, keep_params_in_input=False)
        return relax.transform.FoldConstant()(relax.transform.DeadCodeElimination()(mod))
    except Exception as err:  # noqa: BLE001 - TVM's ONNX frontend raises many error types
        raise ModelImportError(f"TVM's ONNX frontend could not translate the model: "
                               f"{type(err).__name__}: {err}") from err


def onnx_runner(proto):
    """A callable running the model with ONNX Runtime, to check against (None when ONNX
    Runtime is not installed)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*inputs):
        out = session.run(None, {n: np.ascontiguousarray(t.numpy()) for n, t in zip(names, inputs)})
        return torch.from_numpy(out[0])
    return run


def _graph_inputs(proto) -> list:
    initializers = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in initializers]
