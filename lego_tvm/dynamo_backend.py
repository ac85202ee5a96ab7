"""``torch.compile(model, backend="lego_tvm", options={...})``: lego-tvm as a Dynamo backend.

Registered through the ``torch_dynamo_backends`` entry point, so ``import lego_tvm`` is not
needed. Dynamo hands over one FX graph per captured region; each is compiled with
``lego_tvm.compile`` on its first call, and anything that cannot be compiled runs eagerly
with the reason logged (logger ``lego_tvm``, and ``graph_reports()``).

- **Weights are constants.** Dynamo passes parameters and buffers as graph inputs; the
  Lego pass needs their values to prove a layer, so they are frozen into the compiled graph.
  Every call checks that the same tensors come in unchanged (identity and version
  counter): weights changed in place, or replaced, make that graph compile again.
- **Batch sizes.** A graph Dynamo recompiles with a symbolic batch (dimension 0 of every
  input, one symbol) is compiled once with ``dynamic_batch=True``; other symbolic sizes
  get one compiled model per shape seen. ``options={"dynamic_batch": True}`` compiles even
  a static graph with a symbolic batch; ``False`` compiles one model per shape.
- **The authors' LegoConv2d** is captured without a graph break
  (``frontend/dynamo_capture.py``) and fused as under ``lego_tvm.compile``.
- **Inference only**: outputs carry no autograd history.
"""
from __future__ import annotations

import copy
import logging
import re
import threading
import warnings
import weakref
from dataclasses import dataclass, field

import torch

from .compiler import compile as lego_compile
from .frontend.dynamo_capture import trace_requires_grad_assignments_as_nothing
from .frontend.pytorch import InputMutationWarning, export_program
from .support.targets import resolve_target

log = logging.getLogger("lego_tvm")

# torch.compile's options= keys: lego_tvm.compile's keywords.
OPTIONS = ("target", "tuning_logs", "dynamic_batch", "layout", "compute_once", "fuse_lego",
           "lego_weight_tolerance")
# A graph input the caller passes (a local of the traced frame, or an item inside one);
# anything else (module parameters and buffers, other attributes, globals) is state.
_CALLER_INPUT = re.compile(r"L\['[^']*'\](\[[^\]]*\])*")


@dataclass
class GraphReport:
    """What became of one graph Dynamo handed over: compiled (``report``, per shape key)
    or run eagerly (``eager_reason``)."""
    index: int
    ops: int
    reports: dict = field(default_factory=dict)   # shape key -> LegoReport
    eager_reason: str | None = None


_graph_reports: list[GraphReport] = []
# Compiled models by what they were compiled from (see _CompiledGraph._compile); weak: a
# model lives as long as a graph that uses it.
_compiled_models: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_reports_lock = threading.Lock()


def graph_reports() -> list[GraphReport]:
    """One entry per graph this process compiled with the backend, oldest first."""
    with _reports_lock:
        return list(_graph_reports)


def forget_graph_reports() -> None:
    with _reports_lock:
        _graph_reports.clear()


def lego_tvm_backend(gm: torch.fx.GraphModule, example_inputs, options: dict | None = None):
    """The Dynamo backend: a callable running ``gm`` through lego-tvm."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"torch.compile(backend='lego_tvm') options {unknown} are not known; "
                        f"the options are lego_tvm.compile's keywords: {', '.join(OPTIONS)}")
    resolve_target(options.get("target"))    # a wrong target is an error, not a slow model
    with _reports_lock:
        record = GraphReport(len(_graph_reports), sum(
            n.op in ("call_function", "call_method", "call_module") for n in gm.graph.nodes))
        _graph_reports.append(record)
    try:
        return _CompiledGraph(gm, options, record)
    except _CannotCompile as why:
        return _eager(gm, record, str(why))


class _CannotCompile(Exception):
    pass


def _eager(gm, record: GraphReport, reason: str):
    _note_eager(record, reason)
    return gm.forward


def _note_eager(record: GraphReport, reason: str) -> None:
    record.eager_reason = reason
    log.warning("lego-tvm: graph %d (%d ops) runs eagerly: %s", record.index, record.ops, reason)


class _CompiledGraph:
    """Calls ``gm``'s compiled form; compiles on first use, per shape where it must."""

    def __init__(self, gm, options: dict, record: GraphReport):
        self.gm, self.record = gm, record
        self.dynamic_batch = options.pop("dynamic_batch", None)
        self.options = options
        self.inputs, self.state, self.sizes = [], [], []   # placeholder positions by role
        self.state_names = {}
        # Python numbers Dynamo passes as 0-d tensors (``dynamic=True`` does so with float
        # attributes such as BatchNorm's eps): frozen like weights, their values written
        # into the graph, since export cannot trace ``.item()`` of an input.
        self.numbers = []
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        for pos, node in enumerate(placeholders):
            value = node.meta.get("example_value")
            grapharg = node.meta.get("grapharg")
            if isinstance(value, (torch.SymInt, int)):
                self.sizes.append(pos)
            elif not isinstance(value, torch.Tensor) or grapharg is None:
                raise _CannotCompile(f"input {node.name} is a {type(value).__name__}")
            elif _CALLER_INPUT.fullmatch(grapharg.source.name) and not \
                    grapharg.pass_arg_as_tensor:
                self.inputs.append(pos)
            else:
                self.state.append(pos)
                self.state_names[pos] = node.name
                if grapharg.pass_arg_as_tensor:
                    self.numbers.append(pos)
        if not self.inputs:
            raise _CannotCompile("it has no tensor inputs (it reads only weights)")
        self.size_dims = _size_dims(placeholders, self.inputs, self.sizes)
        self.per_shape, self.dynamic_batch = self._batch_plan(placeholders)
        self.frozen: list[tuple[int, torch.Tensor, int]] = []   # (position, tensor, version)
        self.models: dict = {}
        self.eager_reason = None
        self.lock = threading.Lock()

    def _batch_plan(self, placeholders) -> tuple[bool, bool | None]:
        """(whether each input shape needs its own model, the ``dynamic_batch`` to compile
        with): one model with a symbolic batch serves every call Dynamo's guards allow when
        dim 0 of every input is the same symbol and nothing else is symbolic."""
        if self.dynamic_batch is False:
            return bool(self.sizes), False
        symbolic = {(k, d): str(size) for k, pos in enumerate(self.inputs)
                    for d, size in enumerate(placeholders[pos].meta["example_value"].shape)
                    if isinstance(size, torch.SymInt)}
        if not symbolic:
            return False, self.dynamic_batch   # static shapes: one model (batch symbolic if asked)
        if {d for _, d in symbolic} == {0} and len(symbolic) == len(self.inputs) \
                and len(set(symbolic.values())) == 1 and len(self.size_dims) == len(self.sizes):
            return False, True
        return True, self.dynamic_batch

    def __call__(self, *args):
        if self.eager_reason is not None:
            return self.gm(*args)
        if not self._state_unchanged(args):
            self._refreeze(args)
        key = tuple(tuple(args[i].shape) for i in self.inputs) if self.per_shape else "all"
        model = self.models.get(key)
        if model is None:
            model = self._compile(args, key)
            if model is None:
                return self.gm(*args)
        return model(*[args[i] for i in self.inputs])

    def _state_unchanged(self, args) -> bool:
        return bool(self.frozen) and all(args[pos] is t and t._version == version
                                         for pos, t, version in self.frozen) or not self.state

    def _refreeze(self, args) -> None:
        """Take the state tensors of this call; drop the compiled models if their values
        differ from the frozen ones (a tensor recomputed with equal values is kept)."""
        with self.lock:
            changed = not self.frozen
            for pos, old, version in self.frozen:
                new = args[pos]
                unchanged = old._version == version and (new is old or (
                    new.shape == old.shape and new.dtype == old.dtype and torch.equal(new, old)))
                changed = changed or not unchanged
            if changed and self.models:
                log.info("lego-tvm: graph %d: weights or buffers changed since it was "
                         "compiled; compiling it again", self.record.index)
                self.models.clear()
            self.frozen = [(pos, args[pos], args[pos]._version) for pos in self.state]

    def _compile(self, args, key):
        with self.lock:
            if key in self.models:
                return self.models[key]
            inputs = tuple(args[i] for i in self.inputs)
            # Dynamo traces a frame again when only its guards differ (grad mode, a new
            # batch size): the same code over the same unchanged weights is compiled once.
            same = (self.gm.code, key, self.dynamic_batch, repr(sorted(self.options.items())),
                    tuple((id(t), version) for _, t, version in self.frozen))
            model = _compiled_models.get(same)
            if model is not None:
                self.models[key] = model
                self.record.reports[key] = model.report
                return model
            module = _GraphModule(self.gm, args, self.inputs, self.state_names, self.size_dims
                                  if not self.per_shape else {}, self.numbers)
            try:
                program = export_program(module, inputs, dynamic_batch=bool(self.dynamic_batch))
                with warnings.catch_warnings():
                    # Dynamo must keep the graph's in-place changes: run it eagerly instead.
                    warnings.simplefilter("error", InputMutationWarning)
                    model = lego_compile(program, inputs, dynamic_batch=bool(self.dynamic_batch),
                                         **self.options)
            except Exception as err:  # noqa: BLE001 - any failure falls back to eager
                self._give_up(str(err) if isinstance(err, _CannotCompile)
                              else f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}")
                return None
            # The key holds ids: keeping the tensors alive keeps their ids unique.
            model.frozen_state = [t for _, t, _ in self.frozen]
            self.models[key] = _compiled_models[same] = model
            self.record.reports[key] = model.report
            log.info("lego-tvm: graph %d%s: fused %d Lego layers, skipped %d", self.record.index,
                     f" for shapes {list(key)}" if self.per_shape else "",
                     len(model.report.layers), len(model.report.skipped))
            return model

    def _give_up(self, reason: str) -> None:
        self.eager_reason = reason
        _note_eager(self.record, reason)


def _size_dims(placeholders, inputs: list, sizes: list) -> dict:
    """For each symbolic-size placeholder, the (input, dimension) it is the size of."""
    found = {}
    for pos in sizes:
        symbol = str(placeholders[pos].meta["example_value"])
        for k, i in enumerate(inputs):
            dims = [d for d, s in enumerate(placeholders[i].meta["example_value"].shape)
                    if str(s) == symbol]
            if dims:
                found[pos] = (k, dims[0])
                break
    return found


class _GraphModule(torch.nn.Module):
    """``gm`` as a module of the caller's inputs alone, for ``torch.export``: the state
    tensors are its buffers (constants after import) and the sizes are read from the
    inputs (``size_dims``) or fixed to this call's."""

    def __init__(self, gm, args, inputs: list, state: dict, size_dims: dict, numbers: list):
        super().__init__()
        self.numbers = {pos: args[pos].item() for pos in numbers}
        self.gm = _numbers_written_in(gm, self.numbers)
        self.arity, self.input_positions, self.size_dims = len(args), inputs, size_dims
        self.fixed = {pos: int(a) for pos, a in enumerate(args)
                      if pos not in inputs and pos not in state and pos not in size_dims}
        self.state_names = {}
        for pos, name in state.items():   # named as Dynamo named them: errors name the weight
            if pos in self.numbers:
                continue
            self.state_names[pos] = name if not hasattr(self, name) else f"state_{name}"
            self.register_buffer(self.state_names[pos], args[pos].detach())
        self.eval()

    def forward(self, *inputs):
        args = [None] * self.arity
        for pos, value in (*self.fixed.items(), *self.numbers.items()):
            args[pos] = value
        for pos, tensor in zip(self.input_positions, inputs):
            args[pos] = tensor
        for pos, (k, d) in self.size_dims.items():
            args[pos] = inputs[k].shape[d]
        for pos, name in self.state_names.items():
            args[pos] = getattr(self, name)
        return self.gm(*args)


def _numbers_written_in(gm, values: dict):
    """A copy of ``gm`` in which ``placeholder.item()`` is the number itself, for the
    placeholders at the positions ``values`` gives (``gm`` itself when there are none)."""
    if not values:
        return gm
    gm = copy.deepcopy(gm)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for pos, value in values.items():
        for item in [u for u in placeholders[pos].users
                     if u.op == "call_method" and u.target == "item"]:
            for user in list(item.users):
                user.replace_input_with(item, value)
            gm.graph.erase_node(item)
    gm.recompile()
    return gm


trace_requires_grad_assignments_as_nothing(lego_tvm_backend)
