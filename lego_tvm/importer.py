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


def to_relax(program: torch.export.ExportedProgram) -> tvm.IRModule:
    """Translate an exported program to Relax with its parameters folded in as constants.

    The program is functionalized without decomposing (``run_decompositions({})``): that
    turns the authors' in-place ``scatter_`` into ``scatter`` and ``aten.batch_norm`` into
    its inference form. TVM 0.27 translates a raw ``aten.batch_norm`` wrongly (training mode,
    momentum read as epsilon), and its default decomposition turns ``F.one_hot`` into
    ``assert_op`` checks that make ``main`` impure and stop ``FoldConstant``.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            program = program.run_decompositions({})
        mod = from_exported_program(program, unwrap_unit_return_tuple=True,
                                    run_ep_decomposition=False, keep_params_as_input=True)
    except Exception as err:  # noqa: BLE001
        raise ModelImportError(f"TVM's PyTorch frontend could not translate the model: "
                           f"{type(err).__name__}: {err}") from err
    mod = _bind_transformed_params(mod)
    # Folding turns each Lego layer's argmax/scatter one-hot chain into constant merge kernels.
    return relax.transform.FoldConstant()(relax.transform.DeadCodeElimination()(mod))


def _bind_transformed_params(mod: tvm.IRModule) -> tvm.IRModule:
    """Compute everything that depends only on the parameters (each Lego layer's one-hot
    merge kernels, ...) in one build and bind the results into ``main`` as constants.

    Same result as binding the parameters and running ``FoldConstant``, which builds every
    folded op on its own (about 0.6 s per Lego layer; this is one build for the model).
    """
    mod, params = relax.frontend.detach_params(mod)
    params = params.get("main", [])
    lifted = relax.transform.LiftTransformParams()(mod)
    transform = lifted["main_transform_params"].with_attr("global_symbol", "transform_params")
    executable = tvm.compile(tvm.IRModule({"transform_params": transform}), target="llvm")
    values = relax.VirtualMachine(executable, tvm.cpu())["transform_params"](params)
    main = lifted["main"]
    num_input = int(main.attrs["num_input"])
    main = main.bind_params(dict(zip(main.params[num_input:], values)))
    return tvm.IRModule({"main": main.without_attr("num_input")})
