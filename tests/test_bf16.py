"""precision="bf16": the bf16 fused kernel against PyTorch, vdpbf16ps in its code, whole
models within the bf16 bound (OpenVINO's own bf16 error where it is installed) and agreeing
on the top-1 class, and the refusals where a CPU lacks AVX512_BF16.

Tests that run bf16 code need a CPU with AVX512_BF16; the others (building, refusing) run
anywhere.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from torch import nn
from tvm import s_tir, te

import lego_tvm
from lego_tvm import LegoConv2d
from lego_tvm.backend.kernel_timing import build_alone, random_inputs
from lego_tvm.backend.precision import BF16Unavailable
from lego_tvm.bench import runtimes
from lego_tvm.nn.fold import fold_lego_to_dense
from lego_tvm.nn.zoo import get_model
from lego_tvm.op import bf16
from lego_tvm.op.fused_op import LegoConvSpec, lego_conv2d_prim_func
from lego_tvm.schedules.lego_cpu import apply_lego_schedule, default_config
from lego_tvm.schedules.lego_cpu_flat import dpbf16ps_flat_unsupported
from lego_tvm.schedules.simd import simd_profile
from lego_tvm.schedules import x86_amx_flat
from lego_tvm.schedules.x86_amx_flat import amx_flat_unsupported
from lego_tvm.support import targets
from lego_tvm.support.accuracy import BF16_TOLERANCE, TOLERANCE, max_relative_error
from lego_tvm.support.targets import (codegen_target, host_has_amx_bf16, host_has_bf16,
                                      resolve_target)
from models import randomize_bn

needs_bf16 = pytest.mark.skipif(not host_has_bf16(), reason="this CPU lacks AVX512_BF16")
# Any x86-64 machine can build for these; only one with AVX512_BF16 (and AMX) runs the result.
BF16_TARGET = "x86-sapphirerapids"       # AVX512_BF16 and AMX: the maps on AMX where they can
UNITS = {"AMX": BF16_TARGET, "AVX512_BF16": "x86-zen4"}


def runnable(unit: str):
    """``unit``'s target as a test parameter, skipped where this CPU cannot run it."""
    needs = host_has_bf16() and (unit != "AMX" or host_has_amx_bf16())
    return pytest.param(UNITS[unit], id=unit,
                        marks=pytest.mark.skipif(not needs, reason=f"this CPU lacks {unit}"))


def nchw(array: np.ndarray) -> np.ndarray:
    """NCHW[x]c -> NCHW (NCHW unchanged)."""
    if array.ndim == 4:
        return array
    n, cb, h, w, block = array.shape
    return array.transpose(0, 1, 4, 2, 3).reshape(n, cb * block, h, w)


def as_float32(array: np.ndarray) -> np.ndarray:
    """A kernel tensor's values: bf16 bits widened, float32 as it is."""
    return bf16.bits_to_float32(array) if array.dtype == np.uint16 else array


def reference(spec: LegoConvSpec, arrays: dict) -> np.ndarray:
    """The kernel's arithmetic in PyTorch fp32: input and bank rounded to bf16, the rest
    fp32 (NCHW), the output not rounded."""
    x = torch.from_numpy(as_float32(nchw(arrays["x"]))).bfloat16().float()
    bank = torch.from_numpy(arrays["bank"]).bfloat16().float()
    index, coef = torch.from_numpy(arrays["index"]).long(), torch.from_numpy(arrays["coef"])
    pt, pl, pb, pr = spec.padding
    b = spec.split_channels
    out = torch.from_numpy(arrays["bias"])[None, :, None, None]
    for i in range(spec.splits):
        part = F.pad(x[:, i * b:(i + 1) * b], (pl, pr, pt, pb))
        maps = F.conv2d(part, bank, stride=spec.stride)
        out = out + coef[i][None, :, None, None] * maps[:, index[i]]
    if spec.has_residual:
        out = out + torch.from_numpy(as_float32(nchw(arrays["residual"])))
    return (torch.relu(out) if spec.relu else out).numpy()


def run_kernel(spec: LegoConvSpec, target: str, seed: int, fuse_stages: bool | None = None
               ) -> tuple:
    """The kernel of ``spec`` built for ``target`` (its default schedule, or that with
    ``fuse_stages`` set) and run on random data: (its output in NCHW, the arrays it ran on,
    the built module)."""
    if fuse_stages is None:
        module = build_alone(lego_conv2d_prim_func(spec), resolve_target(target))[0]
    else:
        module = _built_with(spec, resolve_target(target), fuse_stages)
    arrays = random_inputs(spec if spec.batch else replace(spec, batch=3),
                           np.random.default_rng(seed))
    tensors = [tvm.runtime.tensor(a) for a in
               dict(arrays, bank=bf16.kernel_bank(arrays["bank"], spec)).values()]
    module["main"](*tensors)
    return nchw(tensors[-1].numpy()), arrays, module


def _built_with(spec: LegoConvSpec, target, fuse_stages: bool):
    sch = s_tir.Schedule(lego_conv2d_prim_func(spec).with_attr("global_symbol", "main"))
    config = default_config(spec, 2, simd_profile(target))
    apply_lego_schedule(sch, replace(config, fuse_stages=fuse_stages))
    return tvm.compile(sch.mod, target=codegen_target(target)).mod


def spec_of(c, n, o, m, size, kernel, stride, **extra) -> LegoConvSpec:
    pad = kernel // 2
    return LegoConvSpec(batch=1, in_channels=c, height=size, width=size, out_channels=n,
                        splits=o, lego_filters=m, split_channels=c // o, kernel=(kernel, kernel),
                        stride=(stride, stride), padding=(pad,) * 4, bank_block=16, bf16=True,
                        **extra)


GRID = [  # c, n, o, m, size, kernel, stride, extra
    (64, 64, 2, 32, 14, 3, 1, {"relu": True}),
    (128, 64, 2, 32, 28, 3, 1, {"relu": True}),               # two channel blocks of 32
    (256, 64, 2, 32, 7, 1, 1, {"has_residual": True}),         # 1x1, 7 pixels a tile
    (3, 32, 1, 32, 17, 7, 2, {"relu": True}),                 # odd channels: padded to even
    (128, 64, 4, 16, 9, 1, 1, {"has_residual": True}),         # 1x1, four splits
    (64, 32, 2, 32, 15, 3, 2, {"in_block": 16, "out_block": 16, "relu": True}),   # NCHW16c
    (96, 48, 2, 32, 6, 3, 1, {"has_residual": True, "relu": True}),   # P = 16: 48 channels
]


@pytest.mark.parametrize("target", [runnable("AMX"), runnable("AVX512_BF16")])
@pytest.mark.parametrize("case", GRID, ids=lambda c: "x".join(map(str, c[:7])))
def test_bf16_kernel_matches_torch_on_the_same_roundings(case, target):
    *shape, extra = case
    spec = spec_of(*shape, **extra)
    out, arrays, _ = run_kernel(spec, target, 5)
    assert max_relative_error(out, reference(spec, arrays)) < TOLERANCE


FLAT_GRID = [  # c, n, o, m, size, stride, extra: 1x1 layers, maps pixels innermost
    (64, 48, 2, 32, 8, 1, {"relu": True}),              # AMX: 2 x 2 tiles of 16 x 16
    (128, 64, 4, 16, 4, 1, {"has_residual": True}),     # AMX: 1 x 1 tile, four splits
    (128, 32, 1, 32, 8, 2, {"relu": True}),              # stride 2, four blocks of 32 channels
    (64, 40, 2, 32, 56, 1, {"has_residual": True}),     # stages fused in row tiles of 56x56
    (128, 64, 2, 64, 28, 1, {"relu": True}),             # vdpbf16ps: 49 vectors, 1 a tile
    (64, 48, 2, 32, 14, 1, {"flat_pad_to": 16}),         # vdpbf16ps: 196 pixels, 208 maps
    (128, 32, 2, 32, 14, 2, {"flat_pad_to": 16, "relu": True}),    # the same at stride 2
    (64, 32, 2, 32, 14, 1, {"relu": True}),              # AMX: tiles of 14 pixels, 2 x 2
    (64, 32, 1, 16, 10, 1, {"has_residual": True}),      # AMX: tiles of 10 pixels, 1 x 1
]


def flat_cases():
    """FLAT_GRID on each unit that takes the case (vdpbf16ps: whole vectors of 16 pixels)."""
    for case in FLAT_GRID:
        c, n, o, m, size, stride, extra = case
        spec = replace(spec_of(c, n, o, m, size, 1, stride, **extra), bank_block=1,
                       flat_pixels=True)
        for unit in UNITS:
            takes = amx_flat_unsupported if unit == "AMX" else dpbf16ps_flat_unsupported
            if takes(spec) is None:
                param = runnable(unit)
                yield pytest.param(spec, param.values[0], marks=param.marks,
                                   id="x".join(map(str, case[:6])) + "-" + unit)


@pytest.mark.parametrize("spec,target", list(flat_cases()))
def test_bf16_flat_kernel_matches_torch_on_the_same_roundings(spec, target):
    assert bf16.flat_unsupported(spec) is None
    out, arrays, module = run_kernel(spec, target, 7)
    assert max_relative_error(out, reference(spec, arrays)) < TOLERANCE
    asm = module.inspect_source("asm")      # not a fallback schedule
    if target == UNITS["AMX"]:
        assert "tdpbf16ps" in asm
    else:
        assert "vdpbf16ps" in asm and "tdpbf16ps" not in asm


def test_flat_maps_pad_their_pixels_only_where_asked_and_in_1x1_bf16_kernels():
    spec = replace(spec_of(64, 64, 2, 32, 14, 1, 1), bank_block=1, flat_pixels=True)
    assert bf16.flat_map_shape(spec, 1)[-1] == 196
    assert bf16.flat_map_shape(replace(spec, flat_pad_to=16), 1)[-1] == 208
    assert "flat_pad_to" not in replace(spec, flat_pad_to=0).as_dict()    # old records match
    for bad in (replace(spec, bf16=False, flat_pad_to=16),
                replace(spec_of(64, 64, 2, 32, 56, 3, 1), bank_block=1, flat_pixels=True,
                        flat_pad_to=16)):
        with pytest.raises(ValueError, match="flat_pad_to: only a bf16 1x1"):
            lego_conv2d_prim_func(bad)


def test_bf16_picks_padded_flat_maps_on_vdpbf16ps_where_they_pay():
    from lego_tvm.backend.precision import _pad_pays
    assert _pad_pays(spec_of(64, 64, 2, 32, 14, 1, 1))          # 196 -> 208
    assert not _pad_pays(spec_of(64, 64, 2, 32, 7, 1, 1))       # 49 -> 64
    assert not _pad_pays(spec_of(64, 64, 2, 32, 8, 1, 1))       # 64: whole vectors


def test_flat_maps_on_vdpbf16ps_take_whole_vectors():
    assert dpbf16ps_flat_unsupported(spec_of(64, 64, 2, 32, 28, 1, 1)) is None
    assert dpbf16ps_flat_unsupported(spec_of(64, 64, 2, 32, 56, 1, 2)) is None   # to 28x28
    assert "196 output pixels" in dpbf16ps_flat_unsupported(spec_of(64, 64, 2, 32, 14, 1, 1))
    padded = spec_of(64, 64, 2, 32, 14, 1, 1, flat_pad_to=16)
    assert dpbf16ps_flat_unsupported(padded) is None
    assert "for vdpbf16ps" in amx_flat_unsupported(padded)
    assert dpbf16ps_flat_unsupported(spec_of(64, 64, 2, 32, 56, 3, 1)) is None   # flat_layout


# Kernels reading and writing bf16 tensors (between two bf16 kernels): the tiled kernel on
# both units, the flat one (1x1 on both, kxk on AMX), and one reading float32 (the output
# of a pooling op).
BF16_TENSOR_CASES = [
    (spec_of(128, 64, 2, 32, 14, 3, 1, has_residual=True, relu=True), "AMX"),
    (spec_of(64, 48, 2, 32, 9, 3, 2, has_residual=True), "AVX512_BF16"),
    (replace(spec_of(64, 48, 2, 32, 8, 1, 1, has_residual=True, relu=True), bank_block=1,
             flat_pixels=True), "AMX"),
    (replace(spec_of(64, 48, 2, 32, 8, 1, 1, has_residual=True, relu=True), bank_block=1,
             flat_pixels=True), "AVX512_BF16"),
    (replace(spec_of(64, 48, 2, 32, 14, 3, 1, has_residual=True, relu=True), bank_block=1,
             flat_pixels=True), "AMX"),
]


@pytest.mark.parametrize("case", [pytest.param((spec, unit, flags), id=f"{unit}-{i}-{name}")
                                  for i, (spec, unit) in enumerate(BF16_TENSOR_CASES)
                                  for name, flags in (("bf16", (True, True, True)),
                                                      ("fp32-in", (False, False, True)))])
def test_bf16_kernel_on_bf16_tensors_rounds_once_to_nearest_even(case):
    base, unit, (bits_in, bits_residual, bits_out) = case
    spec = replace(base, bf16_input=bits_in, bf16_residual=bits_residual, bf16_output=bits_out)
    if not (host_has_bf16() and (unit != "AMX" or host_has_amx_bf16())):
        pytest.skip(f"this CPU lacks {unit}")
    out, arrays, _ = run_kernel(spec, UNITS[unit], 8)
    assert out.dtype == np.uint16 and arrays["x"].dtype == (np.uint16 if bits_in else np.float32)
    expected = reference(spec, arrays)
    # Within one bf16 rounding of the fp32 result, and that rounding is PyTorch's (to nearest
    # even) wherever the fp32 sums agree to the last bits (all but a rare tie).
    assert max_relative_error(bf16.bits_to_float32(out), expected) <= 2.0 ** -8
    assert (out == bf16.bf16_bits(expected)).mean() > 0.999


# kxk stride-1 layers: the padded input and the maps in rows of a pitch
# (bf16.flat_layout), a task's maps whole tiles.
TAP_GRID = [  # c, n, o, m, size, kernel, extra
    (64, 48, 2, 32, 14, 3, {"relu": True}),               # pitch 18, tasks of 2 rows, 2 x 2 tiles
    (128, 64, 2, 64, 28, 3, {"has_residual": True}),      # pitch 30, tasks of 7, two blocks
    (64, 40, 2, 32, 12, 3, {"has_residual": True, "relu": True}),   # 4 tasks of 3 rows
    (64, 32, 1, 32, 12, 5, {"relu": True}),                # 5x5: pitch 20, one split
]


@pytest.mark.parametrize("fuse_stages", [True, False], ids=["fused", "stage-by-stage"])
@pytest.mark.parametrize("target", [runnable(unit) for unit in UNITS])
@pytest.mark.parametrize("case", TAP_GRID, ids=lambda c: "x".join(map(str, c[:6])))
def test_bf16_flat_kernel_with_taps_matches_torch_on_the_same_roundings(case, target,
                                                                         fuse_stages):
    c, n, o, m, size, kernel, extra = case
    spec = replace(spec_of(c, n, o, m, size, kernel, 1, **extra), bank_block=1,
                   flat_pixels=True)
    assert bf16.flat_unsupported(spec) is None
    out, arrays, module = run_kernel(spec, target, 9, fuse_stages)
    assert max_relative_error(out, reference(spec, arrays)) < TOLERANCE
    assert ("tdpbf16ps" if target == UNITS["AMX"] else "vdpbf16ps") in module.inspect_source("asm")


@pytest.mark.parametrize("size,kernel", [(s, k) for s in range(4, 64) for k in (3, 5)])
def test_flat_layout_tasks_are_whole_tiles_reading_inside_the_padded_input(size, kernel):
    spec = replace(spec_of(64, 32, 2, 32, size, kernel, 1), bank_block=1, flat_pixels=True)
    layout = bf16.flat_layout(spec)
    if layout is None:
        assert "no row pitch" in bf16.flat_unsupported(spec)
        return
    pitch, rows = layout
    assert size + kernel - 1 <= pitch <= size + kernel - 1 + bf16.MAX_PITCH_WASTE
    assert size % rows == 0
    tasks, _, pixels = bf16.flat_map_shape(spec, 1)[2:]
    assert tasks * rows == size and pixels % bf16.FLAT_TILE == 0
    # The last tap of the last pixel stays inside the packed input.
    packed = _shape(bf16.pack_input_flat(te.placeholder((1, 64, size, size)), spec, 1))
    last_read = (tasks - 1) * rows * pitch + pixels - 1 + (kernel - 1) * (pitch + 1)
    assert last_read < packed[-1]


def test_tuning_log_names_register_the_flat_intrinsics_with_taps():
    # A shape no other test builds, so that only this call can have registered it.
    name = "lego_tvm.amx_flat_1x2_n16_3_k5x3_p61"
    assert s_tir.TensorIntrin.get(name, allow_missing=True) is None
    x86_amx_flat.register_intrinsics_named_in(f'["tensorize", "{name}"]')
    assert s_tir.TensorIntrin.get(name, allow_missing=True) is not None


def _shape(tensor) -> list[int]:
    return [int(d) for d in tensor.shape]


def test_bf16_flat_kernel_refused_where_its_tiles_do_not_fit():
    assert "neither a 1x1" in bf16.flat_unsupported(spec_of(64, 64, 2, 32, 8, 3, 2))
    assert "no row pitch of 10 to 14" in bf16.flat_unsupported(spec_of(64, 64, 2, 32, 8, 3, 1))
    spec = replace(spec_of(96, 64, 2, 32, 8, 1, 1), bank_block=1, flat_pixels=True)
    assert "48 channels per split" in bf16.flat_unsupported(spec)
    with pytest.raises(ValueError, match="flat_pixels: 48 channels per split"):
        lego_conv2d_prim_func(spec)
    assert amx_flat_unsupported(spec_of(64, 64, 2, 32, 14, 1, 1)) is None    # tiles of 14
    assert "49 output pixels" in amx_flat_unsupported(spec_of(64, 64, 2, 32, 7, 1, 1))


@needs_bf16
def test_bf16_kernel_with_the_batch_chosen_at_call_time():
    spec = replace(spec_of(32, 32, 2, 16, 8, 3, 1, relu=True), batch=None)
    out, arrays, _ = run_kernel(spec, BF16_TARGET, 6)
    assert out.shape[0] == 3
    assert max_relative_error(out, reference(spec, arrays)) < TOLERANCE


def test_bf16_kernel_computes_its_maps_with_vdpbf16ps_or_amx_tiles():
    spec = spec_of(64, 64, 2, 32, 14, 3, 1, relu=True)
    zen4 = build_alone(lego_conv2d_prim_func(spec), resolve_target(UNITS["AVX512_BF16"]))[0]
    assembly = zen4.inspect_source("asm")
    assert assembly.count("vdpbf16ps") >= 8      # the unrolled register tile
    # Not a call: the imported LLVM function is inlined.
    assert "lego_tvm_dpbf16ps" not in assembly and "tdpbf16ps" not in assembly
    spr = build_alone(lego_conv2d_prim_func(spec), resolve_target(UNITS["AMX"]))[0]
    assembly = spr.inspect_source("asm")
    assert "tdpbf16ps" in assembly and "ldtilecfg" in assembly and "tileloadd" in assembly
    assert "lego_tvm_amx_tile" not in assembly and "vdpbf16ps" not in assembly


def test_bank_packing_round_trips_and_pads_odd_channels():
    bank = np.random.default_rng(0).standard_normal((32, 3, 3, 3)).astype(np.float32)
    packed = bf16.pack_bank(bank, 16)
    assert packed.shape == (2, 2, 3, 3, 16, 2) and packed.dtype == np.uint16
    rounded = torch.from_numpy(bank).bfloat16().float().numpy()
    np.testing.assert_array_equal(bf16.unpack_bank(packed, 3), rounded)
    assert not bf16.bits_to_float32(packed[:, 1, :, :, :, 1]).any()    # the zero channel


def _lego_block(m: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(LegoConv2d(32, 32, 3, 2, 0.5, padding=1), randomize_bn(nn.BatchNorm2d(32)),
                         nn.ReLU(), LegoConv2d(32, 32, 3, 2, m / 32, padding=1)).eval()


def test_bf16_report_says_which_kernels_run_in_bf16_and_why_not():
    model, x = _lego_block(8), torch.randn(1, 32, 8, 8)    # the second: 8 Lego filters
    compiled = lego_tvm.compile(model, (x,), target=BF16_TARGET, precision="bf16",
                                tuning_logs=None)
    kinds = [(p.precision, p.reason, p.unit) for p in compiled.report.precision]
    assert sorted(kinds) == [
        ("bf16", "", "AVX512_BF16 (not AMX: 16 channels per split, not a multiple of 32)"),
        ("fp32", "8 Lego filters, not a multiple of 16", "")]
    text = str(compiled.report)
    assert "precision: bf16 in 1 of 2 kernels (maps on AVX512_BF16 in 1)" in text
    assert "not a multiple of 16" in text and "not AMX: 16 channels per split" in text
    assert [layer.spec.bf16 for layer in compiled.report.layers] == [True, False]
    assert compiled.report_dict["precision"][0]["precision"] in ("bf16", "fp32")


class _Branches(nn.Module):
    """a -> b -> (c, max-pool): only a's output is read by bf16 kernels alone."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = LegoConv2d(32, 32, 3, 2, 0.5, padding=1)
        self.bn = randomize_bn(nn.BatchNorm2d(32))
        self.b = LegoConv2d(32, 32, 3, 2, 0.5, padding=1)
        self.c = LegoConv2d(32, 32, 1, 2, 0.5)

    def forward(self, x):
        z = self.b(torch.relu(self.bn(self.a(x))))
        return self.c(z), F.max_pool2d(z, 2)


@needs_bf16
def test_bf16_tensors_only_between_bf16_kernels():
    model, x = _Branches().eval(), torch.randn(2, 32, 12, 12)
    # The host: AMX where this CPU has it, vdpbf16ps where it has only AVX512_BF16.
    compiled = lego_tvm.compile(model, (x,), precision="bf16", tuning_logs=None)
    stored = sorted((p.calls, p.bf16_outputs) for p in compiled.report.precision)
    assert stored == [(1, 0), (1, 0), (1, 1)]      # a's output; not b's (pooled) nor c's
    assert "tensors in bf16: the outputs of 1 of 3 bf16 kernel calls" in str(compiled.report)
    with torch.no_grad():
        expected = model(x)
    for out, ref in zip(compiled(x.numpy()), expected):
        assert out.dtype == np.float32
        assert max_relative_error(np.asarray(out), ref.numpy()) < BF16_TOLERANCE


@needs_bf16
def test_bf16_classifier_reads_its_weights_in_bf16_and_sums_in_fp32():
    torch.manual_seed(0)
    model, x = nn.Linear(512, 100).eval(), torch.randn(3, 512)
    # The host: AMX where this CPU has it, vdpbf16ps where it has only AVX512_BF16.
    compiled = lego_tvm.compile(model, (x,), precision="bf16", tuning_logs=None)
    assert [(p.kernel, p.unit) for p in compiled.report.precision] == [
        ("matmul_bf16_weights", "weights only (bf16 weights, fp32 inputs and sums)")]
    assert "matmuls with bf16 weights (fp32 inputs and sums): 1" in str(compiled.report)
    weight = model.weight.detach().bfloat16().float()
    expected = (x @ weight.T + model.bias).detach().numpy()
    assert max_relative_error(compiled(x.numpy()), expected) < TOLERANCE
    assert max_relative_error(compiled(x.numpy()), model(x).detach().numpy()) > 1e-4


@needs_bf16
def test_bf16_model_with_the_batch_chosen_at_call_time():
    """bf16 kernels, a bf16 tensor between two of them and the classifier's bf16 weights, in
    one module for any batch."""
    from test_compiler_dynamic_batch import SmallLegoNet

    torch.manual_seed(0)
    model = SmallLegoNet().eval()
    compiled = lego_tvm.compile(model, torch.randn(1, 3, 12, 12), dynamic_batch=True,
                                tuning_logs=None, precision="bf16")
    text = str(compiled.report)
    assert "bf16 in 2 of 3 kernels" in text and "matmuls with bf16 weights" in text
    assert "the outputs of 1 of 2 bf16 kernel calls" in text
    for batch in (1, 3):
        x = torch.randn(batch, 3, 12, 12)
        with torch.no_grad():
            expected = model(x).numpy()
        assert max_relative_error(compiled(x.numpy()), expected) < BF16_TOLERANCE


@pytest.mark.parametrize("target", ["x86-avx512", "x86-znver3", "arm-neoverse-n1", "cuda-h100"])
def test_bf16_refused_for_a_target_without_avx512_bf16(target):
    model, x = _lego_block(16), torch.randn(1, 32, 8, 8)
    with pytest.raises(BF16Unavailable, match="AVX512_BF16"):
        lego_tvm.compile(model, (x,), target=target, precision="bf16")


def test_bf16_refused_on_a_host_without_it(monkeypatch):
    """Neither built for the host nor run on it when the CPU lacks AVX512_BF16."""
    model, x = _lego_block(16), torch.randn(1, 32, 8, 8)
    compiled = lego_tvm.compile(model, (x,), target=BF16_TARGET, precision="bf16",
                                tuning_logs=None)
    flags = targets.host_cpu_flags()
    monkeypatch.setattr(targets, "host_cpu_flags", lambda: flags - {"amx_bf16"})
    assert "lacks AMX" in (targets.why_not_runnable_here(resolve_target(BF16_TARGET)) or "")
    monkeypatch.setattr(targets, "host_cpu_flags", lambda: flags - {targets.BF16_CPU_FLAG})
    with pytest.raises(RuntimeError, match="AVX512_BF16"):
        compiled(x.numpy())
    if resolve_target(None).attrs.get("mcpu") not in ("znver4", "sapphirerapids"):
        with pytest.raises(BF16Unavailable, match="lacks AVX512_BF16"):
            lego_tvm.compile(model, (x,), precision="bf16")


def test_bf16_options_are_checked():
    model, x = _lego_block(16), torch.randn(1, 32, 8, 8)
    with pytest.raises(ValueError, match="choose one of fp32, bf16"):
        lego_tvm.compile(model, (x,), precision="fp16")
    with pytest.raises(ValueError, match="compute_once='tvm'"):
        lego_tvm.compile(model, (x,), target=BF16_TARGET, precision="bf16",
                         compute_once="winograd")


def _bound(model: nn.Module, x: torch.Tensor, reference: np.ndarray) -> float:
    """OpenVINO's bf16 error on the same dense-folded model and input, where OpenVINO is
    installed and computes in bf16 here; else the documented bound."""
    if runtimes.why_missing("openvino_default") or \
            runtimes.precision_of_openvino_default() != "bf16":
        return BF16_TOLERANCE
    runs, errors = runtimes.runtime_runs(fold_lego_to_dense(model), x, reference, 2, lambda _: None,
                                         "bf16 bound", keys=("openvino_default",))
    return errors["openvino_default"]


@needs_bf16
@pytest.mark.parametrize("name", ["lego_vgg16", pytest.param("lego_resnet50",
                                                             marks=pytest.mark.slow)])
def test_bf16_zoo_model_within_openvinos_bf16_error_and_same_top1(name):
    model, x = get_model(name)
    batch = torch.randn(16, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    compiled = lego_tvm.compile(model, (batch,), precision="bf16")
    kept = [p.reason for p in compiled.report.precision if p.precision != "bf16"]
    assert kept == ["3 input channels: kept fp32 for accuracy"]     # the first conv
    with torch.no_grad():
        reference = model(batch).numpy()
    out = compiled(batch.numpy())
    error = max_relative_error(out, reference)
    assert error < _bound(model, batch, reference)
    agree = (out.argmax(1) == reference.argmax(1)).mean()
    assert agree >= 0.9, f"top-1 agrees on {agree:.0%} of 16 random inputs"
