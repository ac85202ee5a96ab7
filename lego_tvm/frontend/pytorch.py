"""PyTorch -> Relax, for Lego models exactly as users wrote them.

The authors' ``LegoConv2d`` stores a freshly built one-hot tensor on ``self`` and sets its
``requires_grad`` inside ``forward``. Strict ``torch.export`` rejects that, so export runs
non-strict (the assignment is traced as the computation it is), and whatever tensor
attributes the trace left on the modules are put back afterwards: the user's model is not
changed by compiling it.
"""
from __future__ import annotations

import inspect
import os
import warnings
from contextlib import contextmanager

import torch
import tvm
from tvm import relax
from torch.export.graph_signature import InputKind, InputSpec, TensorArgument
from tvm.relax.frontend.torch import from_exported_program

from ..nn.lego_conv import is_lego_module


class ModelImportError(RuntimeError):
    """The model could not be traced or translated; the message says which step failed."""


class InputMutationWarning(UserWarning):
    """The model changes one of its inputs in place; the compiled model computes the same
    outputs but leaves its inputs as they were."""


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


def export_program(model: torch.nn.Module, example_inputs: tuple, dynamic_batch: bool = False
                   ) -> torch.export.ExportedProgram:
    """``torch.export`` the model in inference mode (non-strict; see the module docstring).

    ``dynamic_batch``: dimension 0 of every input is one symbolic batch size."""
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple({0: batch} for _ in example_inputs)
        if any(p.kind == p.VAR_POSITIONAL
               for p in inspect.signature(model.forward).parameters.values()):
            dynamic_shapes = (dynamic_shapes,)   # forward(*inputs): one argument, a tuple
        # torch.export specializes sizes 0 and 1: trace with two images.
        example_inputs = tuple(torch.cat([t[:1], t[:1]]) for t in example_inputs)
    _check_lego_modules(model)
    was_training = model.training
    model.eval()
    try:
        with _restored_tensor_attributes(model), torch.no_grad(), warnings.catch_warnings():
            # The authors' module assigns a tensor attribute in forward; that is expected here.
            warnings.filterwarnings("ignore", message=".*was assigned during export.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            return torch.export.export(model, tuple(example_inputs), strict=False,
                                       dynamic_shapes=dynamic_shapes)
    except Exception as err:  # noqa: BLE001 - torch.export raises many error types
        raise ModelImportError(f"torch.export could not trace {type(model).__name__}: "
                           f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                           ) from err
    finally:
        model.train(was_training)


def as_program(model, example_inputs: tuple, dynamic_batch: bool = False
               ) -> torch.export.ExportedProgram:
    """``model`` itself if it is a ``torch.export`` program, else exported (``export_program``)."""
    if isinstance(model, torch.export.ExportedProgram):
        return model
    return export_program(model, tuple(example_inputs), dynamic_batch)


def _check_lego_modules(model: torch.nn.Module) -> None:
    """The authors' module accepts sizes it cannot run (fewer input channels than splits);
    say so instead of tracing into PyTorch's conv error."""
    for name, module in model.named_modules():
        if is_lego_module(module) and min(module.lego.shape[:2]) < 1:
            raise ModelImportError(
                f"{name or 'the model'} ({type(module).__name__}, in_channels="
                f"{module.in_channels}, n_split={module.n_split}) has {module.basic_channels} "
                f"input channels per split and {module.lego.shape[0]} Lego filters; a Lego "
                "layer needs at least one of each (in_channels >= n_split)")


def _check_dtypes(program: torch.export.ExportedProgram) -> None:
    """lego-tvm compiles float32 models: TVM's PyTorch import computes other float types in
    float32 (a float64 or float16 model would silently give float32 results), or fails."""
    kinds = {spec.arg.name: spec for spec in program.graph_signature.input_specs}
    for node in program.graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(value, torch.Tensor) and value.is_floating_point() \
                and value.dtype != torch.float32:
            spec = kinds.get(node.name)
            what = (f"input {node.name}" if spec is None or spec.kind == InputKind.USER_INPUT
                    else f"{spec.kind.name.lower()} {spec.target}")
            raise ModelImportError(
                f"{what} is {str(value.dtype).replace('torch.', '')}; lego-tvm compiles float32 "
                "models with float32 inputs (convert with model.float() and tensor.float())")


def to_relax(program: torch.export.ExportedProgram) -> tvm.IRModule:
    """Translate an exported program to Relax with its parameters folded in as constants.

    The program is functionalized and decomposed to core ATen as TVM's own import does
    (``padding='same'``, Mish, pixel (un)shuffle, ... exist for TVM only in that form), with
    one exception: ``F.one_hot``, whose decomposition adds ``assert_op`` checks that make
    ``main`` impure and stop ``FoldConstant``. Functionalizing turns the authors' in-place
    ``scatter_`` into ``scatter`` and ``aten.batch_norm`` into its inference form (TVM 0.27
    translates a raw ``aten.batch_norm`` wrongly: training mode, momentum read as epsilon).
    Every failure, TVM's constant folding of what it imported included, is a
    ``ModelImportError`` naming the op where TVM does.
    """
    _check_dtypes(program)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            program = program.run_decompositions(_decompositions())
        _check_mutations(program)
        _check_tvm_translates_correctly(program)
        _fold_parameter_ops(program)
        mod = from_exported_program(program, unwrap_unit_return_tuple=True,
                                    run_ep_decomposition=False)
        return relax.transform.FoldConstant()(relax.transform.DeadCodeElimination()(mod))
    except ModelImportError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ModelImportError(f"TVM's PyTorch frontend could not translate the model: "
                               f"{type(err).__name__}: {err}") from err


def _check_mutations(program: torch.export.ExportedProgram) -> None:
    """A compiled model keeps no state between calls and leaves its inputs alone: refuse a
    forward that updates buffers, warn of one that changes its inputs (functionalized
    programs list both in their signature)."""
    signature = program.graph_signature
    if signature.buffers_to_mutate:
        raise ModelImportError(
            f"forward updates {', '.join(sorted(set(signature.buffers_to_mutate.values())))} in "
            "place (BatchNorm in training mode, a counter, ...); a compiled model keeps no state "
            "between calls: call model.eval(), or move the update out of the model")
    if signature.user_inputs_to_mutate:
        warnings.warn(f"forward changes its input(s) "
                      f"{', '.join(sorted(set(signature.user_inputs_to_mutate.values())))} in "
                      "place; the compiled model computes the same outputs but leaves its "
                      "inputs as they were", InputMutationWarning, stacklevel=4)


# TVM 0.27 translates these as plain bilinear / bicubic resizes: right when upsampling (where
# antialiasing changes nothing), wrong when downsampling (measured: error 0.5 at half size).
_ANTIALIASED = ("aten._upsample_bilinear2d_aa", "aten._upsample_bicubic2d_aa")


def _check_tvm_translates_correctly(program: torch.export.ExportedProgram) -> None:
    """Refuse what TVM would import without an error but compute wrongly."""
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        op = str(node.target)
        if op.startswith("aten.grid_sampler"):
            raise ModelImportError(f"{node.target} (F.grid_sample): TVM 0.27 translates it "
                                   "wrongly (measured: an output of the wrong shape)")
        # aten.elu(x, alpha, scale, input_scale): TVM reads alpha only; SELU is elu with a scale.
        if op.startswith("aten.elu") and any(
                float(v) != 1.0 for v in list(node.args[2:4]) + [
                    node.kwargs.get(k, 1.0) for k in ("scale", "input_scale")]):
            raise ModelImportError(f"{node.target} with scale or input_scale other than 1 (SELU "
                                   "decomposes to it): TVM 0.27 ignores both and would compute it "
                                   "wrongly (measured: relative error 5e-2)")
        if op.startswith(_ANTIALIASED):
            source, result = node.args[0].meta.get("val"), node.meta.get("val")
            if source is None or result is None or any(
                    out < size for out, size in zip(result.shape[-2:], source.shape[-2:])):
                raise ModelImportError(
                    f"{node.target} (F.interpolate with antialias=True) downsamples; TVM 0.27 "
                    "ignores antialias and would compute it wrongly. Use antialias=False, or "
                    "resize outside the compiled model")


def _decompositions():
    table = torch.export.default_decompositions()
    table.pop(torch.ops.aten.one_hot.default)
    return table


def _fold_parameter_ops(program: torch.export.ExportedProgram) -> None:
    """Compute, with PyTorch, every op that reads only parameters, buffers and constants
    (each Lego layer's argmax/scatter one-hot merge kernels, ...) and give the importer the
    results as constants instead. Changes ``program`` (a fresh one) in place.

    TVM's ``FoldConstant`` would compute the same, but it builds every op it folds with
    LLVM on its own: about 0.6 s per Lego layer.
    """
    signature = program.graph_signature
    stored = {**program.state_dict, **program.constants}
    known = {spec.arg.name: stored[spec.target] for spec in signature.input_specs
             if spec.kind != InputKind.USER_INPUT and spec.target in stored}
    folded = []
    for node in program.graph.nodes:
        if (node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
                and not node.target._schema.is_mutable
                and torch.Tag.nondeterministic_seeded not in node.target.tags
                and all(arg.name in known for arg in node.all_input_nodes)):
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda a: known[a.name])
            value = node.target(*args, **kwargs)
            if isinstance(value, torch.Tensor):
                known[node.name] = value
                folded.append(node)
    boundary = [node for node in folded if any(user not in folded for user in node.users)]
    first_input = next((n for n in program.graph.nodes if n.op != "placeholder"
                        or n.name not in known), None)
    position = next((k for k, spec in enumerate(signature.input_specs)
                     if spec.kind == InputKind.USER_INPUT), len(signature.input_specs))
    for node in boundary:
        name = f"lego_tvm_folded_{node.name}"
        with program.graph.inserting_before(first_input):
            placeholder = program.graph.placeholder(name)
        placeholder.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(placeholder)
        program.constants[name] = known[node.name].detach().clone(
            memory_format=torch.contiguous_format)
        signature.input_specs.insert(position, InputSpec(
            InputKind.CONSTANT_TENSOR, TensorArgument(placeholder.name), target=name))
        position += 1
    program.graph.eliminate_dead_code()
    program.graph_module.recompile()


def load_program(path: str) -> tuple[torch.export.ExportedProgram, tuple]:
    """A program written by ``torch.export.save`` and random inputs shaped like its example
    inputs; ``ModelImportError`` names what is wrong with the file."""
    if not os.path.isfile(path):
        raise ModelImportError(f"{path} is neither a zoo model nor an existing .pt2 file")
    try:
        program = torch.export.load(path)
    except Exception as err:  # noqa: BLE001 - torch raises many error types for a bad file
        raise ModelImportError(f"{path} is not a program written by torch.export.save: "
                               f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                               ) from None
    args = program.example_inputs[0] if program.example_inputs else None
    if args is None:
        raise ModelImportError(f"{path} has no example inputs; save it with "
                               "torch.export.save after torch.export.export(model, example_args)")
    return program, tuple(torch.randn_like(a) for a in args)


def load_model(name: str, batch: int = 1):
    """``(model or program, example inputs, a PyTorch callable to check against)`` for a zoo
    model name or a ``.pt2`` file (``lego-tvm compile`` and ``tune`` take either)."""
    from ..nn.zoo import MODELS, get_model

    if name in MODELS:
        model, example = get_model(name, batch=batch)
        return model, (example,), model
    program, inputs = load_program(name)
    return program, inputs, program.module()


def output_structure(program: torch.export.ExportedProgram):
    """How the model nests its outputs, as JSON-able data the runtime can rebuild without
    torch: ``"leaf"``, ``{"tuple": [...]}``, ``{"list": [...]}`` or
    ``{"dict": [[key, ...], ...]}``, in the order ``torch.export`` flattens them."""
    def convert(spec):
        if spec.is_leaf():
            return "leaf"
        children = [convert(child) for child in spec.children()]
        if spec.type is dict:
            return {"dict": [[key, child] for key, child in zip(spec.context, children)]}
        if spec.type is list:
            return {"list": children}
        if spec.type is tuple:
            return {"tuple": children}
        raise ModelImportError(f"the model returns a {spec.type.__name__}; lego-tvm returns "
                               "tensors, tuples, lists and dicts of them")
    return convert(program.call_spec.out_spec)

