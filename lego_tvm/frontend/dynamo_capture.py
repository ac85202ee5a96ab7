"""Let ``torch.compile`` capture the authors' ``LegoConv2d`` in one graph for lego-tvm.

The authors' ``forward`` sets ``requires_grad = True`` on the one-hot tensor it builds.
Dynamo (torch 2.13) cannot trace that assignment and breaks the graph there, so the one-hot
reaches the next graph as an input, not as something computed from the weights, and the
Lego pass cannot see which filter each output channel picks: nothing is fused.

lego-tvm's backend compiles for inference only (its outputs carry no autograd history),
where ``requires_grad`` changes no value. So, while Dynamo traces a frame *for lego-tvm's
backend*, an assignment of a constant to a tensor's ``requires_grad`` is traced as nothing.
Frames traced for any other backend are traced exactly as before. The one difference a
program can see: the tensor the module stores on itself has ``requires_grad`` False.
"""
from __future__ import annotations

import logging

log = logging.getLogger("lego_tvm")

_backends: list = []        # the backend functions whose frames get the relaxed setattr
_installed = False


def trace_requires_grad_assignments_as_nothing(backend) -> None:
    """Install the relaxed setattr for frames compiled with ``backend`` (idempotent).

    If this torch's Dynamo is not built as expected, say so once and leave it alone: the
    authors' module then breaks the graph and its layers are not fused."""
    global _installed
    if backend not in _backends:
        _backends.append(backend)
    if _installed:
        return
    try:
        from torch._dynamo.variables.builtin import SetAttrBuiltinVariable
        from torch._dynamo.variables.constant import ConstantVariable
        original = SetAttrBuiltinVariable._call_setattr
    except (ImportError, AttributeError) as err:
        log.warning("lego-tvm: this torch's Dynamo has no SetAttrBuiltinVariable._call_setattr "
                    "(%s); modules that set requires_grad in forward (the authors' LegoConv2d) "
                    "will break the graph and their Lego layers will not be fused", err)
        _installed = True
        return

    def _call_setattr(self, tx, obj, name_var, val):
        if (_traced_for_lego_tvm(tx) and obj.is_tensor() and name_var.is_python_constant()
                and name_var.as_python_constant() == "requires_grad"
                and val.is_python_constant()):
            return ConstantVariable.create(None)
        return original(self, tx, obj, name_var, val)

    SetAttrBuiltinVariable._call_setattr = _call_setattr
    _installed = True


def _traced_for_lego_tvm(tx) -> bool:
    """Whether the frame ``tx`` traces will be compiled by one of ``_backends``: Dynamo wraps
    the backend (``WrapBackendDebug`` around ``torch._TorchCompileWrapper``)."""
    fn = getattr(tx.output, "compiler_fn", None)
    for _ in range(4):
        if fn is None or fn in _backends:
            return fn is not None
        fn = getattr(fn, "_torchdynamo_orig_backend", None) or getattr(fn, "compiler_fn", None)
    return False
