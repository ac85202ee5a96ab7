"""Find Lego convolutions in a Relax function and prove each one exact.

After ``FoldConstant`` an imported Lego layer with ``o`` splits reads, per split ``i``::

    s_i = strided_slice(x, axes=[1], begin=[i*b], end=[(i+1)*b])
    l_i = conv2d(s_i, bank)                  # the same constant bank in every split
    u_i = conv2d(l_i, merge_i)               # merge_i: [n, m, 1, 1], one-hot rows x coefficient
    y   = add(... add(add(u_0, 0.0), u_1) ..., u_{o-1})

optionally followed by an inference ``batch_norm`` (or a per-channel constant ``add``), a
residual ``add`` and ``relu``. ``find_lego_layers`` returns a ``LegoMatch`` for every sum of
such units that passes every check, and a ``Rejection`` naming the failed check for every
one that looks like a Lego layer but does not. Nothing here changes the IR.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
from tvm import relax
from tvm.ir import Op

from .factor_weights import factor_weight
from ..op.fused_op import LegoConvSpec
from ..support.tvm_compat import const_array, nchw_shape, same_shape, shape_list

log = logging.getLogger("lego_tvm")


@dataclass
class LegoMatch:
    """A proven Lego convolution and the epilogue folded into it."""
    spec: LegoConvSpec
    data: relax.Expr                  # the input x
    bank: np.ndarray                  # [m, b, kh, kw]
    index: np.ndarray                 # [o, n] int32
    coef: np.ndarray                  # [o, n], BatchNorm scale folded in
    bias: np.ndarray                  # [n], BatchNorm shift folded in
    residual: relax.Expr | None
    anchor: relax.Var                 # the binding the fused call replaces
    var_name: str                     # name of the Lego sum in the imported graph
    folded: list[str] = field(default_factory=list)   # epilogue ops folded, in order
    form: str = "split convs"         # how the model wrote the layer
    padding_filters: int = 0          # zero filters added to the bank for SIMD packing
    kernel: str = ""                  # the fused PrimFunc it became (set by the rewrite)


@dataclass
class Rejection:
    """A convolution that looks like part of a Lego layer but was left as it was."""
    var_name: str
    reason: str
    convs: tuple[str, ...] = ()       # its convs' variables: left alone by later finders


class NotLego(Exception):
    pass


def _op_name(call) -> str | None:
    return call.op.name if isinstance(call, relax.Call) and isinstance(call.op, Op) else None


def ints(values) -> list[int]:
    return [int(v) for v in values]


class Graph:
    """Bindings of one function, looked up by variable, with use counts."""

    def __init__(self, func: relax.Function):
        self.value: dict[relax.Var, relax.Expr] = {}
        self.users: dict[relax.Var, list[relax.Var]] = {}
        self.order: list[relax.Var] = []
        for block in func.body.blocks:
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    continue
                self.value[binding.var] = binding.value
                self.order.append(binding.var)
                for used in _vars_used(binding.value):
                    self.users.setdefault(used, []).append(binding.var)
        for used in _vars_used(func.body.body):
            self.users.setdefault(used, []).append(None)

    def call(self, expr, op: str):
        """The call bound to ``expr`` if it is a call of ``op``."""
        value = self.value.get(expr) if isinstance(expr, relax.Var) else None
        return value if _op_name(value) == op else None

    def single_user(self, var) -> relax.Var | None:
        users = self.users.get(var, [])
        return users[0] if len(users) == 1 else None


def _vars_used(expr) -> list[relax.Var]:
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Call):
        return [v for a in expr.args for v in _vars_used(a)]
    if isinstance(expr, relax.Tuple):
        return [v for f in expr.fields for v in _vars_used(f)]
    if isinstance(expr, relax.TupleGetItem):
        return _vars_used(expr.tuple_value)
    return []


def _is_zero_scalar(expr) -> bool:
    array = const_array(expr)
    return array is not None and array.size == 1 and float(array.reshape(())) == 0.0


@dataclass
class _Unit:
    """One split: ``conv2d(conv2d(slice(x), bank), merge)``."""
    var: relax.Var
    bank_conv: relax.Call
    merge_conv: relax.Call
    source: relax.Expr        # what the bank conv reads: a slice or x itself


def _as_unit(graph: Graph, expr) -> _Unit | None:
    """Structural test only: a 1x1 conv with a constant kernel over a conv with a constant kernel."""
    merge = graph.call(expr, "relax.nn.conv2d")
    if merge is None or const_array(merge.args[1]) is None:
        return None
    bank = graph.call(merge.args[0], "relax.nn.conv2d")
    if bank is None or const_array(bank.args[1]) is None:
        return None
    if const_array(merge.args[1]).shape[2:] != (1, 1):
        return None
    return _Unit(expr, bank, merge, bank.args[0])


def _sum_terms(graph: Graph, var, inner: list, root: bool = True) -> list:
    """Leaves of the ``add`` tree at ``var``, through single-use intermediate sums
    (collected in ``inner``)."""
    add = graph.call(var, "relax.add")
    if add is None or (not root and graph.single_user(var) is None):
        return [var]
    inner.append(var)
    return [t for a in add.args if not _is_zero_scalar(a)
            for t in _sum_terms(graph, a, inner, root=False)]


def _adds_two_sums(graph: Graph, var) -> bool:
    """``var = add(s, t)`` with both ``s`` and ``t`` sums themselves (the splits of one
    Lego layer are added one at a time; two sums added are two layers, or a near miss)."""
    add = graph.call(var, "relax.add")
    return add is not None and all(graph.call(a, "relax.add") is not None for a in add.args)


def check_conv_attrs(call: relax.Call, what: str) -> None:
    attrs = call.attrs
    if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW":
        raise NotLego(f"{what} uses layouts {attrs.data_layout}/{attrs.kernel_layout}/"
                       f"{attrs.out_layout}; only NCHW/OIHW is supported")
    if int(attrs.groups) != 1:
        raise NotLego(f"{what} has groups={int(attrs.groups)}; only groups=1 is supported")
    if ints(attrs.dilation) != [1, 1]:
        raise NotLego(f"{what} has dilation={ints(attrs.dilation)}; only 1 is supported")


def slice_range(graph: Graph, source, channels: int) -> tuple[relax.Expr, int, int]:
    """``(x, begin, end)`` of the channel slice a split reads (x itself reads all channels)."""
    sl = graph.call(source, "relax.strided_slice")
    if sl is None:
        return source, 0, channels
    axes, begin, end = (ints(t.fields) for t in sl.args[1:4])
    strides = ints(sl.args[4].fields) if len(sl.args) > 4 else [1] * len(axes)
    if axes != [1] or strides != [1]:
        raise NotLego(f"split input is a slice over axes {axes} with strides {strides}, "
                       "not a contiguous channel slice")
    shape = nchw_shape(sl.args[0])
    if shape is None:
        raise NotLego(f"split input is a slice of {sl.args[0].ty}, not a 4-D tensor with a "
                       "static channel count")
    # Python slice semantics, as strided_slice has them: negative from the end, clamped.
    begin_c, end_c = (min(max(v + shape[1] if v < 0 else v, 0), shape[1]) for v in (begin[0], end[0]))
    return sl.args[0], begin_c, end_c


def _difference(a: np.ndarray, b: np.ndarray) -> str:
    """Where two filter banks differ, with the values."""
    if a.shape != b.shape:
        return f"shapes {list(a.shape)} and {list(b.shape)}"
    where = np.argwhere(a != b)
    first = tuple(int(k) for k in where[0])
    return (f"shape {list(a.shape)} in both; {len(where)} of {a.size} weights differ, the "
            f"first at {list(first)}: {float(a[first])} and {float(b[first])}")


def _describe(graph: Graph, expr) -> str:
    """A term of the graph in a few words: what computes it and its shape."""
    array = const_array(expr)
    if array is not None:
        return f"a constant of shape {list(array.shape)}"
    op = _op_name(graph.value.get(expr)) if expr in graph.value else "an input"
    name = getattr(expr, "name", type(expr).__name__)
    return f"{name} ({op}, shape {shape_list(expr)})"


def _check_mixed_sum(graph: Graph, terms: list, units: list, inner: list) -> None:
    """A sum of two or more Lego splits and other terms is a near miss (``NotLego``) unless
    the splits form a sum of their own (a layer, then an add: that sum is tried on its own).
    Anything else with non-split terms does not look like a Lego layer."""
    splits = sum(u is not None for u in units)
    if splits < 2 or any(all(_as_unit(graph, t) is not None for t in _sum_terms(graph, s, []))
                         for s in inner):
        return
    others = [_describe(graph, t) for t, u in zip(terms, units) if u is None]
    raise NotLego(f"the sum of its {splits} Lego splits also adds {', '.join(others)}; a "
                   "Lego layer's sum holds only its splits, conv2d(conv2d(slice(x), bank), "
                   "1x1 merge) (a bias or residual added after the sum is folded in)")


def _merge_rows(merge: np.ndarray, split: int) -> tuple[np.ndarray, np.ndarray]:
    """Index and coefficient of each one-hot row of a ``[n, m]`` merge kernel."""
    nonzero = np.count_nonzero(merge, axis=1)
    bad = np.flatnonzero(nonzero > 1)
    if bad.size:
        j = int(bad[0])
        hot = np.flatnonzero(merge[j])
        raise NotLego(
            f"merge kernel of split {split} is not one-hot: output channel {j} mixes "
            f"{int(nonzero[j])} Lego maps (columns {hot.tolist()[:4]}, values "
            f"{[float(v) for v in merge[j, hot[:4]]]}); {bad.size} such rows")
    index = np.argmax(merge != 0, axis=1).astype("int32")       # all-zero row: index 0, coef 0
    coef = merge[np.arange(merge.shape[0]), index]
    return index, coef


def _verify(graph: Graph, units: list[_Unit]) -> tuple[LegoConvSpec, relax.Expr, np.ndarray,
                                                         np.ndarray, np.ndarray]:
    first = units[0]
    bank = const_array(first.bank_conv.args[1])
    m, b, kh, kw = bank.shape
    for i, u in enumerate(units):
        check_conv_attrs(u.bank_conv, f"Lego conv of split {i}")
        check_conv_attrs(u.merge_conv, f"merge conv of split {i}")
        if ints(u.merge_conv.attrs.strides) != [1, 1] or any(ints(u.merge_conv.attrs.padding)):
            raise NotLego(f"merge conv of split {i} has strides {ints(u.merge_conv.attrs.strides)} "
                           f"and padding {ints(u.merge_conv.attrs.padding)}; expected 1 and 0")
        for attr in ("strides", "padding"):
            mine, first_split = (ints(getattr(c.attrs, attr)) for c in (u.bank_conv, first.bank_conv))
            if mine != first_split:
                raise NotLego(f"split {i} convolves with {attr}={mine}, split 0 with {first_split}")
        other = const_array(u.bank_conv.args[1])
        if other.shape != bank.shape or not np.array_equal(other, bank):
            raise NotLego(f"split {i} uses a different filter bank than split 0 "
                           f"({_difference(other, bank)}); a Lego layer shares one bank "
                           "across splits")
    dtypes = {str(u.var.ty.dtype) for u in units} | {str(bank.dtype)}
    if dtypes != {"float32"}:
        raise NotLego(f"dtype {sorted(dtypes)}; only float32 is supported")

    x = None
    for i, u in enumerate(units):
        source_x, begin, end = slice_range(graph, u.source, b)
        if x is None:
            x = source_x
            x_shape = nchw_shape(x)
            if x_shape is None:
                raise NotLego(f"input shape {x.ty} is not a 4-D NCHW shape with static "
                               "channels, height and width")
        elif not source_x.same_as(x):
            raise NotLego(f"split {i} reads a different tensor than split 0 "
                           f"({_describe(graph, source_x)} and {_describe(graph, x)})")
        if (begin, end) != (i * b, (i + 1) * b):
            raise NotLego(f"split {i} reads channels [{begin}, {end}); a Lego layer's split {i} "
                           f"reads [{i * b}, {(i + 1) * b}) (slices must be contiguous, "
                           "in order and non-overlapping)")
        if u.source.same_as(x) and len(units) > 1:
            raise NotLego(f"split {i} reads the whole input ({x_shape[1]} channels), "
                           "not a channel slice")

    merges = [const_array(u.merge_conv.args[1])[:, :, 0, 0] for u in units]
    n = merges[0].shape[0]
    for i, merge in enumerate(merges):
        if merge.shape != (n, m):
            raise NotLego(f"merge kernel of split {i} has shape {list(merge.shape)}, "
                           f"expected [{n}, {m}]")
    rows = [_merge_rows(merge, i) for i, merge in enumerate(merges)]
    index = np.stack([r[0] for r in rows]).astype("int32")
    coef = np.stack([r[1] for r in rows]).astype("float32")

    attrs = first.bank_conv.attrs
    pad = ints(attrs.padding)
    if len(pad) == 2:
        pad = pad * 2
    batch, channels, height, width = x_shape
    spec = LegoConvSpec(batch=batch, in_channels=channels, height=height, width=width,
                        out_channels=n, splits=len(units), lego_filters=m, split_channels=b,
                        kernel=(kh, kw), stride=tuple(ints(attrs.strides)),
                        padding=tuple(pad))
    return spec, x, bank, index, coef


def _fold_epilogue(graph: Graph, match: LegoMatch, claimed: set) -> None:
    """Grow ``match`` over BatchNorm / channel bias, then a residual add, then ReLU.

    A binding another match already folded (``claimed``) is never taken twice.
    """
    n = match.spec.out_channels
    stage = 0          # 0: affine ops allowed, 1: residual done, 2: relu done
    while stage < 2:
        claimed.add(match.anchor)
        user = graph.single_user(match.anchor)
        if user is None or user in claimed:
            return
        value = graph.value.get(user)
        name = _op_name(value)
        if name == "relax.nn.batch_norm" and stage == 0 and "batch_norm" not in match.folded:
            attrs = value.attrs
            params = [const_array(a) for a in value.args[1:5]]
            getter = graph.single_user(user)
            item = graph.value.get(getter) if getter is not None else None
            if (any(p is None for p in params) or bool(attrs.training) or int(attrs.axis) != 1
                    or not isinstance(item, relax.TupleGetItem) or int(item.index) != 0):
                return
            gamma, beta, mean, var = (p.astype("float64") for p in params)
            scale = gamma / np.sqrt(var + float(attrs.epsilon)) if bool(attrs.scale) \
                else 1.0 / np.sqrt(var + float(attrs.epsilon))
            shift = (beta if bool(attrs.center) else 0.0) - mean * scale
            match.coef = (match.coef * scale[None, :]).astype("float32")
            match.bias = (match.bias * scale + shift).astype("float32")
            claimed.add(user)
            match.anchor = getter
            match.folded.append("batch_norm")
        elif name == "relax.add" and stage == 0 and value.args[0].same_as(match.anchor) \
                and _channel_vector(const_array(value.args[1]), n) is not None:
            match.bias = (match.bias + _channel_vector(const_array(value.args[1]), n)).astype("float32")
            match.anchor = user
            match.folded.append("bias_add")
        elif name == "relax.add" and stage == 0 and const_array(value.args[1]) is None \
                and const_array(value.args[0]) is None:
            other = value.args[1] if value.args[0].same_as(match.anchor) else value.args[0]
            if other.same_as(match.anchor) or not same_shape(other, match.anchor) \
                    or str(other.ty.dtype) != "float32":
                return
            match.residual = other
            match.anchor = user
            match.folded.append("residual_add")
            stage = 1
        elif name == "relax.nn.relu":
            match.anchor = user
            match.folded.append("relu")
            stage = 2
        else:
            return


def _channel_vector(array: np.ndarray | None, n: int) -> np.ndarray | None:
    """``array`` as a length-``n`` per-channel vector, if it broadcasts as one over NCHW."""
    if array is None or array.dtype != np.float32:
        return None
    if array.size == 1:
        return np.full(n, float(array.reshape(())), "float32")
    if array.ndim in (3, 4) and array.size == n and array.shape[-3] == n:
        return array.reshape(n)
    return None


def find_lego_layers(func: relax.Function) -> tuple[list[LegoMatch], list[Rejection]]:
    """All proven Lego layers of ``func`` (in graph order) and all rejected near misses."""
    graph = Graph(func)
    matches: list[LegoMatch] = []
    rejections: list[Rejection] = []
    claimed: set = set()
    for var in reversed(graph.order):
        if var in claimed or (graph.call(var, "relax.add") is None
                              and graph.call(var, "relax.nn.conv2d") is None):
            continue
        inner: list = []
        terms = _sum_terms(graph, var, inner)
        units = [_as_unit(graph, t) for t in terms]
        if not terms or claimed.intersection(terms):
            continue
        try:
            if any(u is None for u in units):
                _check_mixed_sum(graph, terms, units, inner)
                continue
            spec, x, bank, index, coef = _verify(graph, units)
        except NotLego as err:
            if _adds_two_sums(graph, var):
                continue        # e.g. lego_a(x) + lego_b(x): each sum is tried on its own
            claimed.update(terms + inner)
            log.info("lego-tvm: not rewriting %s: %s", var.name, err)
            convs = tuple(v.name for u in units if u is not None
                          for v in (u.var, u.merge_conv.args[0]) if isinstance(v, relax.Var))
            rejections.append(Rejection(var.name, str(err), convs))
            continue
        claimed.update(terms + inner)
        matches.append(with_epilogue(graph, LegoMatch(
            spec=spec, data=x, bank=bank, index=index, coef=coef,
            bias=np.zeros(spec.out_channels, "float32"), residual=None, anchor=var,
            var_name=var.name), claimed))
    matches.reverse()
    rejections.reverse()
    return matches, rejections


def with_epilogue(graph: Graph, match: LegoMatch, claimed: set) -> LegoMatch:
    _fold_epilogue(graph, match, claimed)
    match.spec = replace(match.spec, has_residual=match.residual is not None,
                         relu="relu" in match.folded)
    return match


def find_dense_convs(func: relax.Function, lego_tolerance: float | None = None,
                     leave_alone: frozenset[str] = frozenset()) -> list[LegoMatch]:
    """Ordinary convolutions with constant weights, as degenerate Lego layers (one split,
    the whole weight as the bank, identity index, unit coefficients) so that they run on
    the same fused kernel, with their BatchNorm / bias / residual / ReLU folded in.

    With ``lego_tolerance`` set, only the convs whose weight is a folded Lego layer
    (``factor_weights.factor_weight`` with that tolerance; 0 is exact), as Lego layers,
    except those named in ``leave_alone`` (the convs of rejected near misses: a one-hot
    merge kernel is trivially Lego-structured, and a near miss stays as it was)."""
    graph = Graph(func)
    matches: list[LegoMatch] = []
    claimed: set = set()
    for var in reversed(graph.order):
        conv = graph.call(var, "relax.nn.conv2d")
        weight = const_array(conv.args[1]) if conv is not None else None
        x_shape = nchw_shape(conv.args[0]) if conv is not None else None
        if weight is None or var in claimed or x_shape is None:
            continue
        try:
            check_conv_attrs(conv, "conv")
        except NotLego:
            continue
        if {str(weight.dtype), str(var.ty.dtype)} != {"float32"}:
            continue
        n, c, kh, kw = weight.shape
        bank, index, coef, form = weight, np.arange(n, dtype="int32")[None], \
            np.ones((1, n), "float32"), "dense"
        if lego_tolerance is not None:
            if var.name in leave_alone:
                continue
            found = factor_weight(weight, lego_tolerance)
            if found is None:
                continue
            bank, index, coef = found.bank, found.index, found.coef
            form = (f"dense-folded (recovered o={found.splits}, m={found.lego_filters}"
                    + (f", deviation {found.deviation:.1e})" if lego_tolerance else ")"))
        pad = ints(conv.attrs.padding)
        spec = LegoConvSpec(batch=x_shape[0], in_channels=x_shape[1], height=x_shape[2],
                            width=x_shape[3], out_channels=n, splits=index.shape[0],
                            lego_filters=bank.shape[0], split_channels=c // index.shape[0],
                            kernel=(kh, kw), stride=tuple(ints(conv.attrs.strides)),
                            padding=tuple(pad * 2 if len(pad) == 2 else pad))
        matches.append(with_epilogue(graph, LegoMatch(
            spec=spec, data=conv.args[0], bank=bank, index=index, coef=coef,
            bias=np.zeros(n, "float32"), residual=None, anchor=var, var_name=var.name,
            form=form), claimed))
    matches.reverse()
    return matches
