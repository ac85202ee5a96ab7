"""Blocked channel layouts (NCHW[x]c, NeoCPU) carried from one fused kernel to the next.

Every conv of a model runs on the fused kernel (``transform.fuse_conv2d``), which can read and write
NCHW or NCHW[x]c (``LegoConvSpec.in_block`` / ``out_block``). ``PropagateBlockedLayout``
lets a kernel write NCHW[x]c when every reader of its output is a fused kernel that can read
it (as its input, or as the residual of a kernel that writes NCHW[x]c too); each reader
then reads NCHW[x]c. A tensor any other op reads (pooling, flatten, the model's output)
stays NCHW, so the graph needs no layout_transform at all: the first kernel after a
pooling reads NCHW and writes blocks, the last before one reads blocks and writes NCHW.
"""
from __future__ import annotations

from dataclasses import replace

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..op.fused_op import LegoConvSpec, layout_name, lego_conv2d_prim_func, spec_of

LAYOUTS = ("NCHW", "NCHWc")
X_ARG, RESIDUAL_ARG = 0, 5      # positions in the fused call: x, bank, index, coef, bias, residual


def _tag(in_block: int, out_block: int) -> str:
    return f"{layout_name(in_block)}_{layout_name(out_block)}".lower()


@tvm.transform.module_pass(opt_level=0, name="PropagateBlockedLayout")
class PropagateBlockedLayout:
    """Give chains of fused kernels the NCHW[``block``]c layout; afterwards ``self.changed``
    maps each changed call's output variable name to ``(in_block, out_block, kernel)``."""

    def __init__(self, block: int):
        self.block = block
        self.changed: dict[str, tuple[int, int, str]] = {}

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _Rewriter(mod)
        for gvar, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            plan = _plan(func, mod, self.block)
            if plan:
                rewriter.plan = plan
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        self.changed = rewriter.changed
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())


def _fused_calls(func: relax.Function, mod: tvm.IRModule
                 ) -> dict[relax.Var, tuple[relax.Call, LegoConvSpec]]:
    calls = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if (isinstance(binding, relax.VarBinding) and isinstance(value, relax.Call)
                    and value.op.same_as(tvm.ir.Op.get("relax.call_tir"))
                    and isinstance(value.args[1], relax.Tuple)):
                callee = mod[value.args[0]]
                spec = spec_of(callee) if isinstance(callee, tirx.PrimFunc) else None
                if spec is not None:
                    calls[binding.var] = (value, spec)
    return calls


def _uses(func: relax.Function) -> dict[relax.Var, list[tuple[relax.Var | None, int]]]:
    """Who reads each variable: ``(binding var, argument position)`` for a call_tir
    argument, ``(None, -1)`` for anything else (other ops, tuples, the function's result)."""
    uses: dict[relax.Var, list] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if (isinstance(value, relax.Call) and value.op.same_as(call_tir)
                    and isinstance(value.args[1], relax.Tuple)):
                for position, arg in enumerate(value.args[1].fields):
                    if isinstance(arg, relax.Var):
                        uses.setdefault(arg, []).append((binding.var, position))
                    else:
                        _note_free_vars(arg, uses)
            else:
                _note_free_vars(value, uses)
    _note_free_vars(func.body.body, uses)
    return uses


def _note_free_vars(expr: relax.Expr, uses: dict) -> None:
    for var in relax.analysis.free_vars(expr):
        uses.setdefault(var, []).append((None, -1))


def _plan(func: relax.Function, mod: tvm.IRModule, block: int
          ) -> dict[relax.Var, tuple[int, int]]:
    """``(in_block, out_block)`` for every fused call whose layout changes."""
    calls = _fused_calls(func, mod)
    uses = _uses(func)

    def reads_blocks(var: relax.Var) -> bool:
        s = calls[var][1]
        return s.split_channels % block == 0 and s.in_channels % block == 0

    def residual_of(var: relax.Var):
        args = calls[var][0].args[1].fields
        return args[RESIDUAL_ARG] if len(args) > RESIDUAL_ARG else None

    blocked = {var for var, (_, spec) in calls.items()
               if spec.out_channels % block == 0 and uses.get(var)
               and all(user in calls and (position == RESIDUAL_ARG or
                                          (position == X_ARG and reads_blocks(user)))
                       for user, position in uses[var])}
    # A residual is added in the layout the kernel writes: both blocked, or neither.
    changed = True
    while changed:
        changed = False
        for var in list(blocked):
            residual = residual_of(var)
            readers_ok = all(position != RESIDUAL_ARG or user in blocked
                             for user, position in uses[var])
            if not readers_ok or (residual is not None and residual not in blocked):
                blocked.discard(var)
                changed = True
    plan = {}
    for var, (call, _) in calls.items():
        x = call.args[1].fields[X_ARG]
        layout = (block if x in blocked else 1, block if var in blocked else 1)
        if layout != (1, 1):
            plan[var] = layout
    return plan


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.plan: dict[relax.Var, tuple[int, int]] = {}
        self.changed: dict[str, tuple[int, int, str]] = {}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        layout = self.plan.get(binding.var)
        if layout is None:
            super().visit_var_binding_(binding)
            return
        call = binding.value
        spec = replace(spec_of(self.builder_.get()[call.args[0]]),
                       in_block=layout[0], out_block=layout[1])
        gvar = self.builder_.add_func(lego_conv2d_prim_func(spec),
                                      f"{call.args[0].name_hint}_{_tag(*layout)}")
        args = [self.visit_expr(arg) for arg in call.args[1].fields]
        batch = binding.var.ty.shape[0]
        out_ty = relax.TensorType((batch,) + spec.output_shape[1:], spec.dtype)
        new_call = self.builder_.normalize(relax.call_tir(gvar, args, out_ty=out_ty))
        # A variable of the same kind (dataflow or not), now with the blocked shape.
        var = type(binding.var)(binding.var.name, new_call.ty)
        self.builder_.emit_normalized(relax.VarBinding(var, new_call))
        self.set_var_remap(binding.var, var)
        self.changed[binding.var.name] = (*layout, gvar.name_hint)
