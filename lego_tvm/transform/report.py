"""What the pass did, per layer: shapes, weights and MACs dense vs Lego, and rejections."""
from __future__ import annotations

import collections
from dataclasses import dataclass, field, asdict

from ..op.fused_op import LegoConvSpec, layout_name, spec_of


@dataclass
class LegoLayerReport:
    name: str                 # the PyTorch module, when known, else the graph variable
    spec: LegoConvSpec
    folded: list[str]         # epilogue ops folded into the fused operator
    form: str = "split convs"  # how the model wrote it: split convs, dense-folded, ...
    kernel: str = ""          # the fused PrimFunc it runs on (shared by equal shapes)
    output: str = ""          # the graph variable the fused call binds

    @property
    def dense_weights(self) -> int:
        s = self.spec
        return s.out_channels * s.in_channels * s.kernel[0] * s.kernel[1]

    @property
    def lego_weights(self) -> int:
        """The shared bank; the o*n coefficients and indices are reported separately."""
        s = self.spec
        return s.lego_filters * s.split_channels * s.kernel[0] * s.kernel[1]

    @property
    def dense_macs(self) -> int:
        s = self.spec
        return (s.batch or 1) * s.out_height * s.out_width * self.dense_weights

    @property
    def lego_macs(self) -> int:
        return self.spec.lego_macs

    def as_dict(self) -> dict:
        return {"name": self.name, "spec": self.spec.as_dict(), "folded": self.folded,
                "form": self.form, "kernel": self.kernel,
                "dense_weights": self.dense_weights, "lego_weights": self.lego_weights,
                "dense_macs": self.dense_macs, "lego_macs": self.lego_macs}


@dataclass
class SkippedLayer:
    name: str
    reason: str


@dataclass
class LegoReport:
    layers: list[LegoLayerReport] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)
    other_weights: int = 0    # convs and matmuls left as they were (the same in both models)
    other_macs: int = 0
    dense_convs: list[LegoLayerReport] = field(default_factory=list)   # ordinary convs on the kernel
    tuned_kernels: list[str] = field(default_factory=list)   # scheduled from a tuning log
    # Functions no lego-tvm rule scheduled, or whose schedule did not build, left to TVM's
    # default schedule (``backend.pipeline.Fallback``: function, reason).
    fallbacks: list = field(default_factory=list)
    compute_once: list = field(default_factory=list)   # compute_once.KernelChoice per kernel
    compute_once_check: dict = field(default_factory=dict)   # "auto": whole-model times
    # precision="bf16": backend.precision.KernelPrecision per kernel (empty: all fp32)
    precision: list = field(default_factory=list)

    def mark_bf16(self, mod) -> None:
        """After ``backend.precision.to_bf16`` made ``mod``: each layer on a bf16 kernel
        names that kernel and has its spec (bf16, its bank's packing, whether its maps are
        pixels innermost)."""
        bf16_kernels = {p.kernel for p in self.precision if p.precision == "bf16"}
        # A kernel called on both kinds of tensor is built twice (the second named
        # ``..._bf161``); both have the same maps.
        funcs = sorted((gv.name_hint, f) for gv, f in mod.functions_items())
        for layer in self.layers + self.dense_convs:
            if f"{layer.kernel}_bf16" in bf16_kernels:
                layer.kernel = f"{layer.kernel}_bf16"
                layer.spec = next(spec_of(f) for name, f in funcs
                                  if name.startswith(layer.kernel))

    def _choice_of(self, layer: LegoLayerReport):
        return next((c for c in self.compute_once if c.kernel == layer.kernel), None)

    def backend_of(self, layer: LegoLayerReport) -> str:
        """What computed this layer's Lego feature maps: "tvm" (direct), "winograd" or
        "onednn"."""
        choice = self._choice_of(layer)
        return choice.backend if choice is not None else "tvm"

    def _maps_note(self, layer: LegoLayerReport) -> str:
        choice = self._choice_of(layer)
        if choice is None or choice.backend == "tvm":
            return ""
        return f"  [maps: {_backend_name(choice)}]"

    @property
    def totals(self) -> dict:
        """Over the Lego layers, and over the whole model (its other convs/matmuls added)."""
        t = {k: sum(getattr(layer, k) for layer in self.layers)
             for k in ("dense_weights", "lego_weights", "dense_macs", "lego_macs")}
        t["weight_ratio"] = _ratio(t["dense_weights"], t["lego_weights"])
        t["mac_ratio"] = _ratio(t["dense_macs"], t["lego_macs"])
        t["model_dense_macs"] = t["dense_macs"] + self.other_macs
        t["model_lego_macs"] = t["lego_macs"] + self.other_macs
        t["model_mac_ratio"] = _ratio(t["model_dense_macs"], t["model_lego_macs"])
        t["model_dense_weights"] = t["dense_weights"] + self.other_weights
        t["model_lego_weights"] = t["lego_weights"] + self.other_weights
        return t

    def as_dict(self) -> dict:
        return {"layers": [layer.as_dict() for layer in self.layers],
                "skipped": [asdict(s) for s in self.skipped],
                "other_weights": self.other_weights, "other_macs": self.other_macs,
                "dense_convs": [c.as_dict() for c in self.dense_convs],
                "tuned_kernels": self.tuned_kernels,
                "fallbacks": [asdict(f) for f in self.fallbacks],
                "compute_once": [c.as_dict() for c in self.compute_once],
                "compute_once_check": self.compute_once_check,
                "precision": [p.as_dict() for p in self.precision],
                "totals": self.totals}

    def __str__(self) -> str:
        head = (f"{'layer':<28} {'c':>5} {'n':>5} {'d':>2} {'s':>2} {'o':>2} {'m':>5} "
                f"{'weights dense':>14} {'lego':>10} {'MACs dense':>14} {'lego':>13}  fused epilogue")
        lines = [f"Lego layers rewritten: {len(self.layers)}, near misses left as they were: "
                 f"{len(self.skipped)}", head, "-" * len(head)]
        for layer in self.layers:
            s = layer.spec
            lines.append(
                f"{layer.name[:28]:<28} {s.in_channels:>5} {s.out_channels:>5} {s.kernel[0]:>2} "
                f"{s.stride[0]:>2} {s.splits:>2} {s.lego_filters:>5} {layer.dense_weights:>14,} "
                f"{layer.lego_weights:>10,} {layer.dense_macs:>14,} {layer.lego_macs:>13,}  "
                f"{'+'.join(layer.folded) or '-'}"
                + ("" if layer.form == "split convs" else f"  [{layer.form}]")
                + self._maps_note(layer)
                + (" [bf16]" if s.bf16 else "")
                + _layout_note(s))
        t = self.totals
        lines.append("-" * len(head))
        lines.append(f"{'total':<28} {'':>5} {'':>5} {'':>2} {'':>2} {'':>2} {'':>5} "
                     f"{t['dense_weights']:>14,} {t['lego_weights']:>10,} {t['dense_macs']:>14,} "
                     f"{t['lego_macs']:>13,}")
        lines.append(f"Lego layers: weights {t['weight_ratio']:.2f}x smaller, MACs "
                     f"{t['mac_ratio']:.2f}x fewer than the same layers dense")
        lines.append(f"whole model (other convs and matmuls: {self.other_macs:,} MACs): "
                     f"{t['model_dense_macs'] / 1e6:.1f} M MACs dense-equivalent, "
                     f"{t['model_lego_macs'] / 1e6:.1f} M with lego-tvm "
                     f"({t['model_mac_ratio']:.2f}x)")
        if any(layer.spec.batch is None for layer in self.layers):
            lines.append("MACs are per image: the batch size is chosen at call time")
        if self.dense_convs:
            lines.append(f"ordinary convs run on the same fused kernel: {len(self.dense_convs)} "
                         f"({', '.join('+'.join(c.folded) or 'plain' for c in self.dense_convs[:3])}"
                         f"{', ...' if len(self.dense_convs) > 3 else ''})")
        tuned = ", ".join(self.tuned_kernels[:4]) + (", ..." if len(self.tuned_kernels) > 4 else "")
        lines.append(f"kernels scheduled from tuning logs: {len(self.tuned_kernels)}"
                     + (f" ({tuned})" if tuned else "; all use the hand-written default schedules"))
        for fallback in self.fallbacks:
            lines.append(f"TVM's default schedule for {fallback.function}: {fallback.reason}")
        if self.compute_once:
            lines.append(_compute_once_summary(self.compute_once))
        if self.compute_once_check:
            c = self.compute_once_check
            lines.append(f"whole model: {c['onednn_ms']:.2f} ms with oneDNN where it was faster "
                         f"alone, {c['tvm_only_ms']:.2f} ms on TVM only")
        if self.precision:
            lines.append(_precision_summary(self.precision))
        for skip in self.skipped:
            lines.append(f"not rewritten: {skip.name}: {skip.reason}")
        return "\n".join(lines)


def _layout_note(spec: LegoConvSpec) -> str:
    if spec.in_block == spec.out_block == 1:
        return ""
    return f"  [{layout_name(spec.in_block)} -> {layout_name(spec.out_block)}]"


def _backend_name(choice) -> str:
    if choice.backend == "winograd":
        return f"Winograd F({choice.winograd}x{choice.winograd}, 3x3)"
    return {"tvm": "direct", "onednn": "oneDNN"}[choice.backend]


def _compute_once_summary(choices: list) -> str:
    counts = collections.Counter(_backend_name(c) for c in choices)
    impls = sorted({part for c in choices if c.backend == "onednn"
                    for part in c.note.split("; ") if not part.startswith("not ")})
    line = ("Lego feature maps computed by " + ", ".join(f"{name} in {n}"
                                                        for name, n in counts.items())
            + f" of {len(choices)} kernels" + (f" ({', '.join(impls)})" if impls else ""))
    timed = [c for c in choices if c.tvm_ms is not None]
    if timed:
        def ways(c) -> str:
            wino = "/".join(f"{ms:.2f}" for ms in c.winograd_ms.values()) or "-"
            onednn = f"{c.onednn_ms:.2f}" if c.onednn_ms is not None else "-"
            return f"{c.kernel} {c.tvm_ms:.2f}/{wino}/{onednn}"
        line += ("; timed each way (ms: direct / Winograd F(2x2)/F(4x4) / oneDNN): "
                 + ", ".join(ways(c) for c in timed))
    not_used = sorted({part for c in choices for part in c.note.split("; ")
                       if part.startswith("not ")})
    if not_used:
        line += "; " + "; ".join(not_used)
    return line


def _precision_summary(precisions: list) -> str:
    # backend.precision.WEIGHTS_ONLY: a matmul whose constant weights only are bf16
    matmuls = [k for k in precisions if k.unit.startswith("weights only")]
    kernels = [k for k in precisions if k not in matmuls]
    fp32 = [k for k in kernels if k.precision != "bf16"]
    units = collections.Counter(k.unit.split(" (")[0] for k in kernels if k.precision == "bf16")
    line = (f"precision: bf16 in {len(kernels) - len(fp32)} of {len(kernels)} kernels ("
            + ", ".join(f"maps on {unit} in {n}" for unit, n in units.items()) + ")")
    if matmuls:
        line += f"; matmuls with bf16 weights (fp32 inputs and sums): {len(matmuls)}"
    not_amx = sorted({k.unit.split(" (not AMX: ")[1].rstrip(")") for k in kernels
                      if "(not AMX: " in k.unit})
    if not_amx:
        line += "; not AMX: " + "; ".join(not_amx)
    if fp32:
        line += "; fp32: " + ", ".join(f"{k.kernel} ({k.reason})" for k in fp32)
    calls = sum(k.calls for k in kernels)
    stored = sum(k.bf16_outputs for k in kernels)
    return line + (f"; tensors in bf16: the outputs of {stored} of {calls} bf16 kernel calls "
                   "(those only bf16 kernels read); the others and the model's inputs and "
                   "outputs float32")


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def count_other_layers(func) -> tuple[int, int]:
    """Weights and MACs of the convs and matmuls of a Relax function (after the pass these
    are the layers it left as they were)."""
    import tvm
    from tvm import relax

    from ..support.tvm_compat import const_array, static_shape

    def per_image(expr):
        """The static shape, a symbolic (call-time) batch counted as one image."""
        shape = getattr(expr.ty, "shape", None)
        dims = list(shape) if shape is not None else []
        try:
            return tuple(int(d) if i or isinstance(d, tvm.tirx.IntImm) else 1
                         for i, d in enumerate(dims)) or None
        except (TypeError, ValueError):
            return None

    weights = macs = 0
    for block in func.body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or not hasattr(call.op, "name"):
                continue
            out = per_image(binding.var)
            if call.op.name in ("relax.nn.conv2d", "relax.matmul") and out is not None:
                kernel = static_shape(call.args[1])
                if kernel is None:
                    continue
                per_output = (kernel[1] * kernel[2] * kernel[3] if call.op.name == "relax.nn.conv2d"
                              else kernel[-2])
                macs += per_output * _prod(out)
                if const_array(call.args[1]) is not None:
                    weights += _prod(kernel)
    return weights, macs


def _prod(shape) -> int:
    result = 1
    for d in shape:
        result *= d
    return result
