"""CUDA, checked without a GPU: both zoo models compile for every GPU preset into CUDA
kernels (no function left to run on the host), the fused Lego kernels have the launch
configuration and shared memory their schedule chose, and the generated source compiles
with nvcc for sm_80 and sm_90 without errors or register spills, and the GPU build, its
thread loops run one after another on the CPU, computes what PyTorch computes."""
import os
import re
import subprocess

import numpy as np
import pytest
import torch
import tvm

import lego_tvm
from conftest import TOLERANCE, cuda_source
from lego_tvm.support.accuracy import max_relative_error
from lego_tvm.backend import pipeline
from lego_tvm.op.fused_op import lego_kernels, spec_of
from lego_tvm.frontend.pytorch import export_program, to_relax
from lego_tvm.schedules.cuda import (default_config, narrow_indices, serial_threads, shared_bytes,
                                     tiled_shared_bytes)
from lego_tvm.support.targets import PRESETS, host_target, resolve_target
from lego_tvm.nn.zoo import get_model
from tvm import relax, tirx

GPU_PRESETS = [name for name in PRESETS if name.startswith("cuda-")]
NVCC = os.environ.get("NVCC", "/usr/local/cuda/bin/nvcc")
LEGO_LAYERS = {"lego_vgg16": 14, "lego_resnet50": 48}
_cache = {}


def compiled_for_gpu(model_name: str, preset: str):
    """(scheduled IRModule, CUDA source, Lego report) the way ``compile`` builds them."""
    key = (model_name, preset)
    if key not in _cache:
        if model_name not in _cache:
            model, x = get_model(model_name)
            _cache[model_name] = to_relax(export_program(model, (x,)))
        target = resolve_target(preset)
        mod, report = pipeline.fuse_convs(_cache[model_name], target)
        mod, _, _ = pipeline.schedule(pipeline.lower(mod, target), target)
        executable = pipeline.build(mod, target)
        _cache[key] = (mod, cuda_source(executable), report)
    return _cache[key]


def kernel_head(source: str, name: str) -> str:
    """The definition line of the ``__global__`` kernel ``name`` and its shared buffers."""
    match = re.search(r'extern "C" __global__ void __launch_bounds__\((\d+)\) ' + name
                      + r'\(.*\{\n((?:  .*\n)*?)', source)
    assert match, f"no kernel {name} in the CUDA source"
    body_start = match.end()
    body = source[body_start:source.index("\n}\n", body_start)]
    return match.group(1), body


def fused_kernel(layer, x, target) -> tirx.PrimFunc:
    """The one fused Lego kernel of ``layer``, lowered for ``target`` and not scheduled."""
    mod, _ = pipeline.import_and_fuse(layer, (x,), target)
    ((_, func, _),) = lego_kernels(pipeline.lower(mod, target))
    return func


MODEL_PRESETS = [(m, p) for m in LEGO_LAYERS for p in GPU_PRESETS]


@pytest.mark.parametrize("model_name,preset", MODEL_PRESETS)
def test_every_function_becomes_a_cuda_kernel(model_name, preset):
    mod, source, report = compiled_for_gpu(model_name, preset)
    assert len(report.layers) == LEGO_LAYERS[model_name]
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            assert 'thread="blockIdx.x"' in func.script(), \
                f"{gvar.name_hint} has no GPU thread binding: it would run on the host"
    kernels = set(re.findall(r'__global__ void __launch_bounds__\(\d+\) (\w+)\(', source))
    lego = [gvar.name_hint for gvar, _, _ in lego_kernels(mod)]
    assert lego and all(f"{name}_kernel" in kernels for name in lego)


@pytest.mark.parametrize("model_name,preset", MODEL_PRESETS)
def test_fused_kernels_have_their_launch_configuration_and_shared_memory(model_name, preset):
    mod, source, _ = compiled_for_gpu(model_name, preset)
    target = resolve_target(preset)
    fused, shared, tiled = 0, 0, 0
    for gvar, func, spec in lego_kernels(mod):
        config = default_config(spec, target)
        threads, body = kernel_head(source, f"{gvar.name_hint}_kernel")
        assert int(threads) == config.threads
        script = func.script()
        assert f'T.thread_binding({config.threads}, thread="threadIdx.x")' in script
        fused += 1
        if config.fuse_stages:
            shared += 1
            blocks = (spec.batch * (spec.out_height // config.tile_h)
                      * (spec.out_width // config.tile_w))
            assert f'T.thread_binding({blocks}, thread="blockIdx.x")' in script
            floats = shared_bytes(spec, config.tile_h, config.tile_w) // 4
            assert f"__shared__ alignas(64) float lego_feature_shared_ptr[{floats}];" in body
            assert "__syncthreads();" in body
        elif config.tiled:      # stage by stage, the Lego stage tiled: window + bank chunk
            tiled += 1
            blocks = (spec.batch * spec.splits
                      * (spec.lego_filters // spec.bank_block // config.filter_blocks)
                      * (spec.out_height // config.tile_h) * (spec.out_width // config.tile_w))
            assert f'T.thread_binding({blocks}, thread="blockIdx.x")' in script
            floats = re.findall(r"__shared__ alignas\(64\) float \w+\[(\d+)\];", body)
            assert len(floats) == 2
            assert 4 * sum(map(int, floats)) == tiled_shared_bytes(spec, config)
            assert "__syncthreads();" in body
        else:
            assert "__shared__" not in body          # stage by stage: the tile is in global
    # Every fused kernel of VGG-16 (CIFAR sizes) keeps its Lego tile in shared memory, and
    # most of ResNet-50's; the rest (o*m maps of 4 pixels overflow the budget) tile their
    # Lego stage through shared memory.
    assert shared == fused if model_name == "lego_vgg16" else shared >= 0.7 * fused
    assert tiled == fused - shared


@pytest.mark.parametrize("model_name", list(LEGO_LAYERS))
@pytest.mark.parametrize("preset,arch", [("cuda-a100", "sm_80"), ("cuda-h100", "sm_90")])
def test_generated_cuda_compiles_with_nvcc_without_spills(model_name, preset, arch, tmp_path):
    assert os.access(NVCC, os.X_OK), f"nvcc not found at {NVCC} (set NVCC=...)"
    _, source, _ = compiled_for_gpu(model_name, preset)
    path = tmp_path / "kernels.cu"
    path.write_text(source)
    done = subprocess.run([NVCC, "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-o",
                           str(tmp_path / "kernels.cubin"), str(path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    functions = re.findall(r"Compiling entry function '(\w+)' for '(\w+)'\n.*\n\s*(\d+) bytes "
                           r"stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                           done.stderr)
    assert len(functions) == source.count("__global__") // 2 and functions
    spilling = [f[0] for f in functions if f[3] != "0" or f[4] != "0"]
    assert not spilling, f"register spills in {spilling}"


def test_a_gpu_model_says_it_needs_a_gpu_and_exports(tmp_path):
    model = lego_tvm.LegoConv2d(16, 16, 3, 2, 0.5).eval()
    compiled = lego_tvm.compile(model, torch.randn(1, 16, 8, 8), target="cuda-a100",
                                tuning_logs=None)
    assert compiled.device.dlpack_device_type() == 2          # kDLCUDA
    with pytest.raises(RuntimeError, match="built for CUDA and this machine has no GPU"):
        compiled(torch.randn(1, 16, 8, 8))
    path = compiled.export(str(tmp_path / "layer_cuda.so"))
    assert os.path.getsize(path) > 0


def test_tunable_cuda_design_spaces_are_the_default_body_and_build_to_cuda_kernels():
    import tvm
    from tvm import s_tir

    from tvm.s_tir import meta_schedule as ms

    import lego_tvm.tuning.search  # noqa: F401 - registers the MetaSchedule rules
    from lego_tvm.op.fused_op import GATHER_BLOCK, SCHEDULE_RULE
    from lego_tvm.backend.kernel_timing import kernel_arguments

    layer = lego_tvm.LegoConv2d(32, 32, 3, 2, 0.5).eval()
    target = resolve_target("cuda-a100")
    func = fused_kernel(layer, torch.randn(1, 32, 14, 14), target)
    sch = s_tir.Schedule(func)
    # The name MetaSchedule looks up for a block annotated with our rule on a CUDA target.
    rule = tvm.get_global_func(f"s_tir.meta_schedule.cuda.{SCHEDULE_RULE}")
    with target:
        spaces = list(rule(sch, sch.get_sblock(GATHER_BLOCK)))
    assert len(spaces) == 3                      # fused stages, stage by stage, tiled
    # What tuning does to each candidate: spread the tiled stage's shared-memory loads over
    # its threads, then reject what the GPU cannot launch.
    context = ms.TuneContext(mod=tvm.IRModule({"main": func}), target=target,
                             space_generator="post-order-apply")
    for postproc in (ms.postproc.RewriteCooperativeFetch(), ms.postproc.VerifyGPUCode()):
        postproc._initialize_with_tune_context(context)
        assert all(postproc.apply(space) for space in spaces)
    assert "cooperative_fetch" not in spaces[2].mod["main"].script()
    sources = [cuda_source(tvm.compile(space.mod["main"].with_attr("global_symbol", "lego"),
                                       target=target)) for space in spaces]
    assert all("sample_categorical" in str(space.trace) for space in spaces)
    assert all("__global__" in source for source in sources)
    assert ["__shared__" in source for source in sources] == [True, False, True]
    args = kernel_arguments(spec_of(func), np.random.default_rng(0))
    outputs = [run_serially(space.mod["main"], args) for space in spaces]
    for other in outputs[1:]:
        np.testing.assert_array_equal(other, outputs[0])


def test_tuning_for_a_gpu_needs_one_and_names_its_log_folder_by_architecture(tmp_path):
    from lego_tvm.support.targets import TargetError
    from lego_tvm.tuning.logs import target_key

    assert [target_key(resolve_target(p)) for p in ("cuda-a100", "cuda-l4", "cuda-h100")] == \
        ["cuda-sm_80", "cuda-sm_89", "cuda-sm_90"]
    layer = lego_tvm.LegoConv2d(16, 16, 3, 2, 0.5).eval()
    with pytest.raises(TargetError, match="cannot time cuda-sm_90 kernels on this machine"):
        lego_tvm.tune(layer, torch.randn(1, 16, 8, 8), tmp_path / "log", target="cuda-h100",
                      trials=2)
    assert not (tmp_path / "log").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model_name", list(LEGO_LAYERS))
@pytest.mark.parametrize("preset", ["cuda-a100", "cuda-h100"])
def test_gpu_build_run_with_serial_threads_on_the_cpu_matches_torch(model_name, preset):
    """Numbers from the GPU build without a GPU: every kernel of the CUDA-scheduled model
    (the fused Lego kernels and dlight's), its thread and block loops run one after another
    on the CPU, must give PyTorch's output. This checks what the schedules compute (tiles,
    shared-memory regions, index narrowing, fused epilogues), not what only concurrent
    threads can get wrong (TVM inserts the barriers between shared-memory stages)."""
    mod, _, _ = compiled_for_gpu(model_name, preset)
    on_cpu = tvm.IRModule(dict(mod.functions_items()))
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            on_cpu[gvar] = serial_threads(func)
    vm = relax.VirtualMachine(pipeline.build(on_cpu, host_target()), tvm.cpu())
    model, x = get_model(model_name)
    out = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    with torch.no_grad():
        reference = model(x).numpy()
    assert max_relative_error(out, reference) <= TOLERANCE


def run_serially(func: tirx.PrimFunc, args: list) -> np.ndarray:
    """The output of a scheduled fused kernel run on the CPU with its threads made serial."""
    kernel = serial_threads(narrow_indices(func)).with_attr("global_symbol", "main")
    built = tvm.compile(tvm.IRModule({"main": kernel}), target=host_target())
    tensors = [tvm.runtime.tensor(a) for a in args]
    built["main"](*tensors)
    return tensors[-1].numpy()


def test_every_cuda_schedule_computes_the_same():
    """Fused stages, stage by stage and the tiled Lego stage, each with 1, 2 and 4 pixels per
    thread, change who computes what and where it is kept, not the result (nor the order of
    the sums): with threads made serial on the CPU they all give exactly the same output."""
    from tvm import s_tir

    from lego_tvm.backend.kernel_timing import kernel_arguments
    from lego_tvm.schedules.cuda import apply_lego_schedule, schedule_variants

    torch.manual_seed(0)
    layer = lego_tvm.LegoConv2d(32, 32, 3, 2, 0.5).eval()
    target = resolve_target("cuda-h100")
    func = fused_kernel(layer, torch.randn(2, 32, 12, 12), target)
    spec = spec_of(func)
    args = kernel_arguments(spec, np.random.default_rng(0))
    configs = schedule_variants(spec, target, (1, 2, 4))
    assert [(c.pixels, c.fuse_stages, c.tiled) for c in configs] == [
        (p, fused, tiled) for p in (1, 2, 4)
        for fused, tiled in ((True, False), (False, False), (False, True))]
    outputs = []
    for config in configs:
        sch = s_tir.Schedule(func)
        apply_lego_schedule(sch, config)
        outputs.append(run_serially(sch.mod["main"], args))
    assert np.abs(outputs[0]).max() > 0.1
    for config, other in zip(configs[1:], outputs[1:]):
        np.testing.assert_array_equal(other, outputs[0], err_msg=str(config))
