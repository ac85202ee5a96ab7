"""PyTorch -> Relax, for Lego models exactly as users wrote them.

The authors' ``LegoConv2d`` stores a freshly built one-hot tensor on ``self`` and sets its
``requires_grad`` inside ``forward``. Strict ``torch.export`` rejects that, so export runs
non-strict (the assignment is traced as the computation it is), and whatever tensor
attributes the trace left on the modules are put back afterwards: the user's model is not
changed by compiling it.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
import tvm
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program


class ModelImportError(RuntimeError):
    """The model could not be traced or translated; the message says which step failed."""


@contextmanager
def _restored_tensor_attributes(model: torch.nn.Module):
    saved = [(m, {k: v for k, v in vars(m).items() if isinstance(v, torch.Tensor)})
             for m in model.modules()]
    try:
        yield
    finally:
        for module, attrs in saved:
            for key in [k for k, v in vars(module).items()
                        if isinstance(v, torch.Tensor) and k not in attrs]:
                delattr(module, key)
            vars(module).update(attrs)


def export_program(model: torch.nn.Module, example_inputs: tuple) -> torch.export.ExportedProgram:
    """``torch.export`` the model in inference mode (non-strict; see the module docstring)."""
    was_training = model.training
    model.eval()
    try:
        with _restored_tensor_attributes(model), torch.no_grad(), warnings.catch_warnings():
            # The authors' module assigns a tensor attribute in forward; that is expected here.
            warnings.filterwarnings("ignore", message=".*was assigned during export.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            return torch.export.export(model, tuple(example_inputs), strict=False)
    except Exception as err:  # noqa: BLE001 - torch.export raises many error types
        raise ModelImportError(f"torch.export could not trace {type(model).__name__}: "
                           f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                           ) from err
    finally:
        model.train(was_training)


def _aten_batch_norm(node, importer) -> relax.Var:
    """``aten.batch_norm(x, weight, bias, mean, var, training, momentum, eps, cudnn)``.

    TVM 0.27 maps this op (seen without decomposition, e.g. under ``torch.no_grad``) onto the
    ``_native_batch_norm_legit`` signature, reading ``training`` as momentum and momentum
    as epsilon, and always in training mode: a silent miscompile. This is the exact one.
    """
    import numpy as np

    x = importer.env[node.args[0]]
    channels = int(importer.shape_of(x)[1])
    dtype = x.ty.dtype.dtype

    def arg(i, default):
        value = node.args[i] if len(node.args) > i else None
        return importer.env[value] if value is not None else relax.const(default, dtype)

    training = bool(node.args[5]) if len(node.args) > 5 else False
    momentum = float(node.args[6]) if len(node.args) > 6 else 0.1
    eps = float(node.args[7]) if len(node.args) > 7 else 1e-5
    bn = importer.block_builder.emit(relax.op.nn.batch_norm(
        data=x, gamma=arg(1, np.ones(channels)), beta=arg(2, np.zeros(channels)),
        moving_mean=arg(3, np.zeros(channels)), moving_var=arg(4, np.ones(channels)),
        axis=1, epsilon=eps, center=node.args[2] is not None, scale=node.args[1] is not None,
        momentum=momentum, training=training))
    return importer.block_builder.emit(bn[0])


def to_relax(program: torch.export.ExportedProgram) -> tvm.IRModule:
    """Translate an exported program to Relax with its parameters folded in as constants.

    ``run_ep_decomposition=False``: the default decomposition turns ``F.one_hot`` into
    ``assert_op`` range checks that make ``main`` impure and stop ``FoldConstant``.
    """
    try:
        mod = from_exported_program(program, unwrap_unit_return_tuple=True,
                                    run_ep_decomposition=False,
                                    custom_convert_map={"batch_norm.default": _aten_batch_norm})
    except Exception as err:  # noqa: BLE001
        raise ModelImportError(f"TVM's PyTorch frontend could not translate the model: "
                           f"{type(err).__name__}: {err}") from err
    # Folding turns each Lego layer's argmax/scatter one-hot chain into constant merge kernels.
    return relax.transform.FoldConstant()(mod)
