"""The GPU benchmark and check: everything lego-tvm claims about CUDA, measured in one run
(under 8 minutes). ``lego-tvm bench --target cuda`` runs it; so does ``tools/gpu_check.py``,
the device kit's entry point, which adds its flags. On a machine with an NVIDIA GPU,
apache-tvm 0.27 and PyTorch with CUDA:

    lego-tvm bench --target cuda --out-dir gpu-check      # everything, into gpu-check/

1. compiles lego_vgg16 and lego_resnet50 (batch 1 and 32) for the GPU it finds, with and
   without the Lego pass, and checks both against PyTorch on the GPU (fp32, TF32 off);
   fp16 is tried and reported as supported or not (lego-tvm refuses float16 models today);
2. times, per layer (the 3x3 layers of the x86 benchmark) and per model: PyTorch eager with
   the authors' module, PyTorch dense-folded (cuDNN in fp32, and on the GPU also in TF32,
   PyTorch's default), PyTorch batch-folded Lego (the best hand-written formulation), TVM
   without the pass and lego-tvm; medians after warm-up;
3. tunes the fused operator of one layer shortly (MetaSchedule + XGBoost) and times the
   tuned kernel;
4. times each layer's fused kernel alone with 1, 2 and 4 pixels per thread (the default is
   1), with fused stages, stage by stage and stage by stage with a tiled Lego stage: data
   for the CUDA defaults;
5. writes results.json, results.md and the tuning log (with its manifest naming the GPU)
   to --out. Steps that would overrun --budget-s are skipped and listed as skipped.

``--smoke`` only compiles, runs and checks one small layer (the first thing to try on a new
machine). ``--device cpu --quick`` runs the same flow on the host CPU with small sizes: CI
uses it to keep this script working between GPU runs. Its numbers are not GPU numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time

import numpy as np
import torch

from ..compiler import compile as lego_compile
from ..nn.fold import fold_lego_to_batch_folded, fold_lego_to_dense
from ..nn.lego_conv import BatchFoldedLegoConv2d, LegoConv2d
from ..nn.zoo import get_model
from ..support.accuracy import TOLERANCE, max_relative_error
from ..support.targets import PRESETS, clean_config, host_target, resolve_target
from ..support.timing import median_ms
from ..tuning.logs import target_key
from ..tuning.search import tune
from .layers import LAYERS
from .models import LABELS as MODEL_LABELS

LABELS = {"torch_lego": MODEL_LABELS["torch_lego"],
          "torch_dense": MODEL_LABELS["torch_dense"],
          "torch_dense_tf32": "PyTorch eager, dense-folded, TF32 (PyTorch's default)",
          "torch_lego_best": "PyTorch eager, batch-folded Lego",
          "tvm_no_pass": MODEL_LABELS["tvm_no_pass"],
          "lego_tvm": "lego-tvm", "lego_tvm_tuned": "lego-tvm, tuned"}


def gpu_target():
    """The preset for this GPU's architecture, with the host code for this CPU."""
    import tvm
    from tvm.target import Target

    major, minor = tvm.cuda().compute_version.split(".")
    config = {**PRESETS["cuda-a100"], "arch": f"sm_{major}{minor}",
              "host": clean_config(dict(host_target().export()))}
    return Target(config)


def cuda_variants(layer: torch.nn.Module, x: torch.Tensor, target, pixels=(1, 2, 4),
                  serial: bool = False):
    """[(config, PrimFunc, built module)]: the layer's fused CUDA kernel alone under each
    of ``schedule_variants`` (default, stage by stage, tiled; per pixel count). ``serial``:
    built for this CPU with the thread loops serial (the flow without a GPU)."""
    import tvm
    from tvm import s_tir

    from lego_tvm.backend import pipeline
    from lego_tvm.op.fused_op import lego_kernels
    from lego_tvm.schedules.cuda import (apply_lego_schedule, narrow_indices, schedule_variants,
                                         serial_threads)

    mod, _ = pipeline.import_and_fuse(layer.eval(), (x,), target)
    ((_, func, spec),) = lego_kernels(pipeline.lower(mod, target))
    variants = []
    for config in schedule_variants(spec, target, pixels):
        sch = s_tir.Schedule(func)
        apply_lego_schedule(sch, config)
        kernel = narrow_indices(sch.mod["main"]).with_attr("global_symbol", "main")
        built = tvm.compile(tvm.IRModule({"main": serial_threads(kernel) if serial else kernel}),
                            target=host_target() if serial else target)
        variants.append((config, kernel, built))
    return variants


def variant_summary(rows: list[dict]) -> str:
    return ", ".join(f"{r['stages']} {r['pixels']} px/thread {r['median_ms']:.3f} ms"
                     for r in rows)


def stages_name(config) -> str:
    return "fused" if config.fuse_stages else "tiled" if config.tiled else "staged"


def variant_row(config, median_ms: float, error: float) -> dict:
    return {"stages": stages_name(config), "pixels": config.pixels, "threads": config.threads,
            "tile": [config.tile_h, config.tile_w], "filter_blocks": config.filter_blocks,
            "reduce_chunk": config.reduce_chunk, "median_ms": median_ms,
            "max_rel_error_vs_default": error}


def why_no_cuda_runtime() -> str:
    """Why TVM's CUDA runtime did not load: TVM swallows the loader's error."""
    import ctypes

    import tvm

    library = os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so")
    try:
        ctypes.CDLL(library)
    except OSError as err:
        return (f"Loading {library} fails: {err}. It needs the NVIDIA driver's libcuda.so.1 "
                "and CUDA 13's libcudart.so.13 on LD_LIBRARY_PATH.")
    return "TVM's CUDA runtime loads, so the driver sees no GPU."


class Check:
    def __init__(self, args):
        import tvm

        self.args = args
        self.start = time.time()
        self.gpu = args.device == "cuda"
        self.target = gpu_target() if self.gpu else host_target()
        self.tvm_device = tvm.cuda() if self.gpu else tvm.cpu()
        self.torch_device = torch.device("cuda" if self.gpu else "cpu")
        self.results = {"device": self._describe(), "target": str(self.target), "models": [],
                        "layers": [], "fp16": None, "tuning": None, "variants": [],
                        "skipped": [],
                        "failures": []}

    def _describe(self) -> dict:
        import tvm

        info = {"torch": torch.__version__, "tvm": tvm.__version__,
                "date": time.strftime("%Y-%m-%d %H:%M")}
        if self.gpu:
            info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else \
                str(self.tvm_device.device_name)
            info["torch_cuda"] = torch.cuda.is_available()
        return info

    def elapsed(self) -> float:
        return time.time() - self.start

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", flush=True)

    def time_left(self, step: str, needs: float) -> bool:
        if self.elapsed() + needs > self.args.budget_s:
            self.results["skipped"].append(step)
            self.log(f"skipping {step}: not enough of the time budget left")
            return False
        return True

    # --- timing ------------------------------------------------------------------------
    def time_torch(self, module, x) -> float:
        def run():
            module(x)
            if self.gpu:            # a CUDA call returns before the GPU has finished
                torch.cuda.synchronize()
        with torch.no_grad():
            return median_ms(run, self.args.repeat, self.args.warmup)

    def time_torch_tf32(self, module, x) -> float:
        """cuDNN's convs with TF32 tensor cores (10-bit mantissa), as PyTorch runs them by
        default on sm_80 and newer: the speed a user gets without asking for fp32."""
        torch.backends.cudnn.allow_tf32 = True
        try:
            return self.time_torch(module, x)
        finally:
            torch.backends.cudnn.allow_tf32 = False

    def run_tvm(self, compiled, x: np.ndarray) -> tuple[float, np.ndarray]:
        """(median ms from TVM's time evaluator, output)."""
        import tvm
        from tvm import relax

        vm = relax.VirtualMachine(compiled.executable, self.tvm_device)
        data = tvm.runtime.tensor(x, self.tvm_device)
        out = vm["main"](data).numpy()
        vm.set_input("main", data)
        timer = vm.time_evaluator("invoke_stateful", self.tvm_device, number=1,
                                  repeat=self.args.repeat, min_repeat_ms=0)
        return statistics.median(timer("main").results) * 1e3, out

    # --- steps -------------------------------------------------------------------------
    def compare(self, name: str, model: torch.nn.Module, x: torch.Tensor, extra: dict) -> dict:
        """Compile ``model`` with and without the pass, check, and time every competitor."""
        model = model.eval()
        self.log(f"[{name}] compiling for {self.target.kind.name}")
        fused = lego_compile(model, (x,), target=self.target, tuning_logs=extra.get("logs"))
        plain = lego_compile(model, (x,), target=self.target, fuse_lego=False,
                                 tuning_logs=None)
        on_device = x.to(self.torch_device)
        competitors = {"torch_lego": model, "torch_dense": fold_lego_to_dense(model),
                       "torch_lego_best": extra.get("best") or fold_lego_to_batch_folded(model)}
        with torch.no_grad():
            reference = model.to(self.torch_device)(on_device).cpu().numpy()
        times, errors = {}, {}
        for key, compiled in (("lego_tvm", fused), ("tvm_no_pass", plain)):
            times[key], out = self.run_tvm(compiled, x.numpy())
            errors[key] = max_relative_error(out, reference)
        for key, module in competitors.items():
            times[key] = self.time_torch(module.to(self.torch_device), on_device)
        if self.gpu:
            times["torch_dense_tf32"] = self.time_torch_tf32(competitors["torch_dense"],
                                                             on_device)
        for key, error in errors.items():
            if error > TOLERANCE:
                self.results["failures"].append(f"{name}: {key} error {error:.2e}")
        self.log(f"[{name}] " + ", ".join(f"{k} {v:.3f} ms" for k, v in times.items())
                 + f"; max error {max(errors.values()):.1e}")
        return {"name": name, "batch": int(x.shape[0]), "median_ms": times,
                "max_rel_error": errors, "lego_layers_fused": len(fused.report.layers)}

    def smoke(self) -> int:
        """One small layer through the whole path: 0 when it runs and matches PyTorch."""
        torch.manual_seed(0)
        layer = LegoConv2d(32, 32, 3, 2, 0.5)
        row = self.compare("smoke 32ch 8x8", layer, torch.randn(1, 32, 8, 8), {})
        print(json.dumps(row), flush=True)
        return 1 if self.results["failures"] else 0

    def everything(self) -> int:
        try:
            self.models()
            self.layers()
            self.fp16()
            self.tuning()
            self.variants()
        finally:
            self.write()
        return 1 if self.results["failures"] else 0

    def models(self) -> None:
        names = ["lego_vgg16"] if self.args.quick else ["lego_vgg16", "lego_resnet50"]
        batches = [1] if self.args.quick else [1, 32]
        for name in names:
            for batch in batches:
                if not self.time_left(f"{name} batch {batch}", 40):
                    continue
                model, x = get_model(name, batch=batch)
                self.results["models"].append(self.compare(f"{name} b{batch}", model, x, {}))

    def layers(self) -> None:
        cases = LAYERS[:1] if self.args.quick else LAYERS
        batches = [1] if self.args.quick else [1, 32]
        for case in cases:
            for batch in batches:
                size = 8 if self.args.quick else case.size
                if not self.time_left(f"layer {case.name} batch {batch}", 15):
                    continue
                torch.manual_seed(0)
                layer = LegoConv2d(case.channels, case.channels, 3, 2, 0.5, stride=case.stride)
                x = torch.randn(batch, case.channels, size, size)
                row = self.compare(f"{case.name} b{batch}", layer, x,
                                   {"best": BatchFoldedLegoConv2d(layer.eval())})
                self.results["layers"].append(row)

    def fp16(self) -> None:
        layer = LegoConv2d(32, 32, 3, 2, 0.5).eval().half()
        x = torch.randn(1, 32, 8, 8).half()
        try:
            compiled = lego_compile(layer, (x,), target=self.target, tuning_logs=None)
            _, out = self.run_tvm(compiled, x.numpy())
            with torch.no_grad():
                reference = layer.to(self.torch_device)(x.to(self.torch_device)).float()
            error = max_relative_error(out.astype("float32"), reference.cpu().numpy())
            self.results["fp16"] = {"supported": True, "fused": len(compiled.report.layers),
                                    "max_rel_error": error}
        except Exception as err:  # noqa: BLE001 - report whatever stops fp16
            self.results["fp16"] = {"supported": False,
                                    "reason": str(err).strip().splitlines()[-1][:300]}
        self.log(f"fp16: {self.results['fp16']}")

    def tuning(self) -> None:
        case = LAYERS[1]                                   # 256ch 28x28 s1
        if not self.time_left("tuning", 150):
            return
        torch.manual_seed(0)
        layer = LegoConv2d(case.channels, case.channels, 3, 2, 0.5).eval()
        size = 8 if self.args.quick else case.size
        x = torch.randn(1, case.channels, size, size)
        log_dir = os.path.join(self.args.out, "tuning", target_key(self.target),
                               f"layer{case.channels}-{size}-b1")
        self.log(f"tuning the fused operator of {case.name}: {self.args.trials} trials")
        manifest = tune(layer, x, log_dir, target=self.target,
                                 trials=self.args.trials, model_name=f"layer {case.name}")
        row = self.compare(f"{case.name} b1 tuned", layer, x,
                           {"logs": [log_dir], "best": BatchFoldedLegoConv2d(layer)})
        self.results["tuning"] = {"log": log_dir, "manifest": manifest, "row": row}

    def variants(self) -> None:
        """Each layer's fused kernel alone under 1, 2 and 4 pixels per thread, with fused
        stages, stage by stage and stage by stage tiled, side by side: data for choosing the
        defaults (lego-tvm's default is 1 pixel, fused wherever the tile fits, else tiled),
        each checked against the default's output."""
        import tvm

        from ..backend.kernel_timing import kernel_arguments
        from ..op.fused_op import spec_of

        # Without a GPU: the sm_90 kernels with their threads serial on this CPU.
        target = self.target if self.gpu else resolve_target("cuda-h100")
        for case in LAYERS[:1] if self.args.quick else LAYERS:
            for batch in [1] if self.args.quick else [1, 32]:
                if not self.time_left(f"variants {case.name} batch {batch}", 20):
                    continue
                torch.manual_seed(0)
                layer = LegoConv2d(case.channels, case.channels, 3, 2, 0.5, stride=case.stride)
                size = 8 if self.args.quick else case.size
                x = torch.randn(batch, case.channels, size, size)
                rows, reference = [], None
                for config, func, kernel in cuda_variants(layer, x, target,
                                                          serial=not self.gpu):
                    args = [tvm.runtime.tensor(a, self.tvm_device) for a in
                            kernel_arguments(spec_of(func), np.random.default_rng(0))]
                    # Every variant must compute what the first (the default) computes: the
                    # one check of these schedules with threads really running concurrently.
                    kernel["main"](*args)
                    out = args[-1].numpy()
                    reference = out if reference is None else reference
                    error = max_relative_error(out, reference)
                    if error > TOLERANCE:
                        self.results["failures"].append(
                            f"variant {case.name} b{batch} {stages_name(config)} "
                            f"{config.pixels} px: error {error:.2e} against the default")
                    timer = kernel.mod.time_evaluator("main", self.tvm_device, number=10,
                                                      repeat=self.args.repeat)
                    rows.append(variant_row(config, statistics.median(timer(*args).results)
                                            * 1e3, error))
                self.results["variants"].append({"name": case.name, "batch": batch,
                                                 "kernels": rows})
                self.log(f"[variants {case.name} b{batch}] " + variant_summary(rows))

    def write(self) -> None:
        os.makedirs(self.args.out, exist_ok=True)
        self.results["seconds"] = round(self.elapsed(), 1)
        with open(os.path.join(self.args.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=1)
        rows = self.results["models"] + self.results["layers"]
        keys = [k for k in LABELS if any(k in r["median_ms"] for r in rows)]
        lines = [f"device: {self.results['device']}; target {self.target.kind.name}; median "
                 f"of {self.args.repeat} runs after {self.args.warmup} warm-up runs",
                 "", "| case | " + " | ".join(LABELS[k] for k in keys)
                 + " | lego-tvm vs dense | max error |", "|---|" + "---:|" * (len(keys) + 2)]
        for r in rows:
            t = r["median_ms"]
            lines.append(f"| {r['name']} | " + " | ".join(
                f"{t[k]:.3f} ms" if k in t else "-" for k in keys)
                + f" | {t['torch_dense'] / t['lego_tvm']:.2f}x"
                + f" | {max(r['max_rel_error'].values()):.1e} |")
        for v in self.results["variants"]:
            lines.append(f"kernel alone, {v['name']} b{v['batch']}: "
                         + variant_summary(v["kernels"]))
        lines += ["", f"fp16: {self.results['fp16']}", f"skipped: {self.results['skipped']}",
                  f"failures: {self.results['failures']}"]
        with open(os.path.join(self.args.out, "results.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))


def main(argv=None) -> int:
    """``tools/gpu_check.py``'s command line (the device kit calls it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-check")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes (the CI run)")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--budget-s", type=float, default=450)
    parser.add_argument("--smoke", action="store_true",
                        help="only compile, run and check one small layer (seconds)")
    return run_gpu_check(parser.parse_args(argv))


def run_gpu_check(args) -> int:
    """The check with ``args`` (those of ``main``): 0 when everything ran and matched,
    1 on a failure (listed in the results), 2 when there is no GPU."""
    if args.device == "cuda":
        import tvm

        if not tvm.cuda().exist:
            print("lego-tvm: TVM sees no CUDA GPU here (use --device cpu to try the flow). "
                  + why_no_cuda_runtime(), file=sys.stderr)
            return 2
        # Compare fp32 with fp32: no TF32 in PyTorch's convs and matmuls.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    check = Check(args)

    def stop(*_):
        # A `timeout` wrapper's SIGTERM still writes what was measured (everything's finally).
        check.results["failures"].append(f"stopped by SIGTERM after {check.elapsed():.0f} s")
        sys.exit(124)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return check.smoke() if args.smoke else check.everything()
    finally:
        signal.signal(signal.SIGTERM, previous)


def bench_gpu(out_dir: str, repeat: int, warmup: int) -> int:
    """``lego-tvm bench --target cuda``: the whole check with its default budget and trials."""
    return run_gpu_check(argparse.Namespace(out=out_dir, device="cuda", quick=False,
                                            repeat=repeat, warmup=warmup, trials=32,
                                            budget_s=450.0, smoke=False))
