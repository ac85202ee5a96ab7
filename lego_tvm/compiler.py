"""``lego_tvm.compile``: PyTorch model -> fused, scheduled, built TVM model."""
from __future__ import annotations

import logging
import os
import warnings

import torch
import tvm

from .backend import compute_once as compute_once_backends
from .backend import pipeline
from .backend import precision as precisions
from .tuning.logs import open_database, shipped_logs
from .transform.report import LegoReport
from .frontend.onnx import example_inputs as onnx_example_inputs
from .frontend.onnx import is_onnx, load_onnx, onnx_to_relax
from .frontend.pytorch import as_program, output_structure
from .runtime import Model
from .support.targets import resolve_target
from .nn.lego_conv import is_lego_module

log = logging.getLogger("lego_tvm")


def compile(model, example_inputs=None, target=None, *, fuse_lego: bool = True,  # noqa: A001
            tuning_logs="auto", dynamic_batch: bool = False,
            lego_weight_tolerance: float = 0.0, compute_once: str = "tvm",
            layout: str = "NCHW", precision: str = "fp32", progress=None) -> Model:
    """Compile a PyTorch model (or a ``torch.export`` program, or an ONNX model: an
    ``.onnx`` path or an ``onnx.ModelProto``) for ``target``.

    ``example_inputs``: a tensor or tuple of tensors (for an ONNX model, optional: the
    shapes in the file are used when they are all fixed); the compiled model takes inputs of
    exactly these shapes and dtypes, except that with ``dynamic_batch=True`` the first
    dimension of every input is the batch size, chosen at each call (the same for all
    inputs; tuned records, made for fixed shapes, then do not apply). ``target``: ``None``
    for the host CPU, a preset name (see ``lego_tvm.targets.PRESETS``), a TVM target tag
    (``tvm.target.list_tags()``, e.g. ``"nvidia/nvidia-h100"``), a TVM target dict or
    ``tvm.target.Target``.
    ``fuse_lego=False`` compiles the same graph without the Lego pass (for comparison).
    ``tuning_logs``: ``"auto"`` applies the logs shipped for this target when their TVM
    version, target and compute version match (others are skipped, with a log line); a
    folder or list of folders (from ``lego-tvm tune``) must match or ``TuningLogError`` is
    raised; ``None`` uses only the hand-written default schedules. Kernels without a tuned
    record always get the default schedules. ``lego_weight_tolerance``: ordinary convs
    whose weights are Lego layers folded into dense weights are fused as Lego layers when
    every weight block is a scaled copy of a shared filter, exactly (0, the default: up to
    the rounding of one multiplication) or within this fraction of the largest weight
    (opt-in; the output then moves by about as much). ``compute_once``: what computes each
    fused kernel's Lego feature maps: ``"tvm"`` (the default, TVM's generated kernel, a
    direct conv), ``"winograd"`` (Winograd F(4x4, 3x3) in TVM's kernel for 3x3 stride-1
    layers, F(2x2, 3x3) below 16x16 outputs; CPU targets), ``"onednn"`` (oneDNN, host CPU
    only; raises ``OneDNNUnavailable`` if oneDNN is missing) or ``"auto"`` (each kernel
    timed every way it can run, here and now, the fastest used; see
    ``backend.compute_once``). ``layout``: ``"NCHW"`` (the default) or ``"NCHWc"``: chains of fused
    kernels hand each other NCHW[x]c tensors (x = SIMD lanes; CPU targets; see
    ``transform.blocked_layout``; the shipped tuning logs are for NCHW kernels).
    ``precision``: ``"fp32"`` (the default) or ``"bf16"``: every fused kernel that can
    stores its input and Lego bank in bf16 and sums in fp32 (AMX tiles, else ``vdpbf16ps``),
    with the Lego maps and the epilogue in fp32; a tensor that only bf16 kernels read is
    stored in bf16, the others and the model's inputs and outputs stay float32; the report
    says which kernels ran in which precision (``backend.precision``).
    bf16 needs a target CPU with AVX512_BF16 (``BF16Unavailable`` otherwise) and
    ``compute_once="tvm"``.
    ``progress``: called with a line of text at each phase (import, scheduling and
    building, each kernel timed for ``compute_once="auto"``).

    The returned model is called with numpy arrays or torch tensors; ``.report`` says which
    Lego layers were fused and why others were not; ``.export(path)`` writes a library.
    """
    onnx_model = None
    if is_onnx(model):
        if dynamic_batch:
            raise ValueError("dynamic_batch=True is for PyTorch models; compile an ONNX model "
                             "for one batch size (example_inputs, or --batch)")
        onnx_model = load_onnx(model)
        if example_inputs is None:
            example_inputs = onnx_example_inputs(onnx_model)
    elif not isinstance(model, (torch.nn.Module, torch.export.ExportedProgram)):
        raise TypeError(f"model is a {type(model).__name__}; compile takes a torch.nn.Module, "
                        "a torch.export.ExportedProgram (wrap a function in an nn.Module) or "
                        "an ONNX model (a .onnx path or an onnx.ModelProto)")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise TypeError(f"example_inputs is {example_inputs!r}; give a tensor or a tuple of "
                        "tensors shaped like the model's inputs")
    if not (tuning_logs is None or tuning_logs == "auto" or isinstance(tuning_logs, (
            str, os.PathLike)) or (isinstance(tuning_logs, (list, tuple)) and all(
            isinstance(d, (str, os.PathLike)) for d in tuning_logs))):
        raise TypeError(f"tuning_logs={tuning_logs!r}: give 'auto', None, a folder or a list of "
                        "folders")
    example_inputs = tuple(example_inputs)
    for i, t in enumerate(example_inputs):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"example input {i} is a {type(t).__name__}; compile takes torch "
                            "tensors (torch.from_numpy converts a numpy array)")
    if precision not in precisions.PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of "
                         f"{', '.join(precisions.PRECISIONS)}")
    if precision == "bf16" and compute_once != "tvm":
        raise ValueError(f"compute_once={compute_once!r} computes the Lego maps in fp32; with "
                         "precision='bf16' use compute_once='tvm'")
    tvm_target = resolve_target(target)
    if precision == "bf16":
        tvm_target = precisions.bf16_target(target, tvm_target)
    if isinstance(model, torch.nn.Module) and model.training:
        warnings.warn("the model is in training mode; lego-tvm compiles it as in eval mode "
                      "(BatchNorm with its running statistics, no dropout) and leaves it as it "
                      "was: call model.eval() first to silence this", stacklevel=2)
    say = progress or (lambda _line: None)
    say("importing the model and fusing Lego layers")
    if onnx_model is not None:
        program = None
        mod, report = pipeline.fuse_convs(onnx_to_relax(onnx_model, example_inputs), tvm_target,
                                          lego=fuse_lego, weight_tolerance=lego_weight_tolerance,
                                          layout=layout)
    else:
        program = as_program(model, example_inputs, dynamic_batch)
        mod, report = pipeline.import_and_fuse(program, example_inputs, tvm_target,
                                               lego=fuse_lego,
                                               weight_tolerance=lego_weight_tolerance,
                                               layout=layout)
    if isinstance(model, torch.nn.Module):
        _name_layers(report, model, example_inputs)
    log.info("lego-tvm: fused %d Lego layers, skipped %d", len(report.layers), len(report.skipped))
    if tuning_logs == "auto":
        database = open_database(shipped_logs(tvm_target), tvm_target, strict=False,
                                 precision=precision)
    elif tuning_logs:
        dirs = [tuning_logs] if isinstance(tuning_logs, (str, os.PathLike)) else list(tuning_logs)
        database = open_database(dirs, tvm_target, strict=True, precision=precision)
    else:
        database = None
    say(f"fused {len(report.layers)} Lego layers; scheduling and building for "
        f"{tvm_target.kind.name}")
    if precision == "bf16":
        mod, report.precision = precisions.to_bf16(mod, tvm_target)
        report.mark_bf16(mod)
    tvm_only, copied_outputs = mod, pipeline.outputs_not_computed(mod)
    mod, report.compute_once = compute_once_backends.choose(mod, tvm_target, compute_once,
                                                            database, progress)
    executable, report.tuned_kernels, report.fallbacks = _schedule_and_build(
        mod, tvm_target, database)
    if compute_once == "auto" and any(c.backend == "onednn" for c in report.compute_once):
        # Kernels timed alone do not show the cost of handing the cores between oneDNN's
        # OpenMP threads and TVM's pool: the whole model decides.
        if progress:
            progress("compute-once backend: timing the whole model with and without oneDNN")
        # Each oneDNN kernel goes back to the fastest TVM kernel (Winograd or direct).
        tvm_choices = [compute_once_backends.without_onednn(c) for c in report.compute_once]
        alternative = _schedule_and_build(
            compute_once_backends.apply_choices(tvm_only, tvm_choices), tvm_target, database)
        times = compute_once_backends.time_models([executable, alternative[0]], example_inputs)
        report.compute_once_check = {"onednn_ms": times[0], "tvm_only_ms": times[1]}
        if times[1] <= times[0]:
            executable, report.tuned_kernels, report.fallbacks = alternative
            for choice, on_tvm in zip(report.compute_once, tvm_choices):
                if choice.backend == "onednn":
                    compute_once_backends.overrule_onednn(
                        choice, on_tvm, "oneDNN faster alone, but the whole model was not "
                        f"({times[0]:.2f} ms vs {times[1]:.2f} ms on TVM only)")
    inputs = [{"shape": [None if dynamic_batch else t.shape[0], *t.shape[1:]],
               "dtype": str(t.dtype).replace("torch.", "")} for t in example_inputs]
    device = tvm.cuda() if tvm_target.kind.name == "cuda" else tvm.cpu()
    compiled = Model(executable, inputs, report.as_dict(), str(tvm_target), device,
                     copied_outputs, output_structure(program) if program else None)
    compiled.report = report
    return compiled


def _schedule_and_build(mod: tvm.IRModule, target, database):
    """Fused Relax module -> (VM executable, names of the kernels scheduled from logs,
    the functions left to TVM's default schedule)."""
    return pipeline.schedule_and_build(pipeline.lower(mod, target), target, database)


def _name_layers(report: LegoReport, model: torch.nn.Module, example_inputs: tuple) -> None:
    """Name report rows after the PyTorch modules, when the Lego modules called in
    forward order line up one-to-one with the fused layers (same c, n, o, m, kernel)."""
    called: list[tuple[str, torch.nn.Module]] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, _i, _o: called.append((names[mod], mod)))
             for m in model.modules() if is_lego_module(m)]
    # In eval mode: a training-mode forward would update the user's BatchNorm statistics.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*[t.clone() for t in example_inputs])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    if len(called) != len(report.layers):
        return
    for layer, (name, module) in zip(report.layers, called):
        s = layer.spec
        if (s.in_channels, s.out_channels, s.splits, s.lego_filters, s.kernel[0]) != (
                module.in_channels, module.out_channels, module.n_split,
                module.lego.shape[0], module.lego.shape[-1]):
            return
    for layer, (name, _) in zip(report.layers, called):
        layer.name = name
