"""The ``lego-tvm`` command line: thin argument parsing over the Python API."""
from __future__ import annotations

import argparse
import json
import logging
import os

DEFAULT_OUT = "lego-tvm-out"


def _whole_number_at_least(lowest: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, not {value}")
        return value
    return parse


_positive_int = _whole_number_at_least(1)
_nonnegative_int = _whole_number_at_least(0)


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="threads for PyTorch and the TVM runtime (default: TVM_NUM_THREADS if "
                        "set, else one per physical core this process may use)")


def _add_target(p: argparse.ArgumentParser) -> None:
    from .support.targets import PRESETS

    p.add_argument("--target", default=None,
                   help=f"host (default), a preset ({', '.join(PRESETS)}), a TVM target tag "
                        "(e.g. raspberry-pi/4b-aarch64; tvm.target.list_tags() lists them) or a "
                        "TVM target as JSON, e.g. '{\"kind\": \"llvm\", \"mcpu\": \"znver3\"}'")


def _add_remote(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "remote device (an ARM board running `python -m tvm.exec.rpc_server`)")
    group.add_argument("--rpc-tracker", metavar="HOST:PORT", help="TVM RPC tracker to get the "
                       "device from (with --rpc-key)")
    group.add_argument("--rpc-key", help="device key the board registered with at the tracker")
    group.add_argument("--rpc-server", metavar="HOST:PORT", help="TVM RPC server to use "
                       "directly, without a tracker")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lego-tvm",
        description="Compile LegoNet models with Apache TVM: Lego convolutions are recognized, "
                    "proven exact and run as fused compute-once/gather-sum kernels.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every pass decision")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or progress lines (results and errors only); "
                             "without a terminal there are lines, not bars")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="the main job: compile the bundled lego_vgg16 for this CPU, check it "
                     "against PyTorch, print what was rewritten and a short speed table",
        description="Compile the bundled lego_vgg16 (CIFAR-10, 32x32, random weights) for the "
                    "host CPU, check it against PyTorch, print the per-layer report and time it "
                    "against PyTorch and TVM without the Lego pass.")
    _add_threads(demo)
    demo.add_argument("--repeat", type=int, default=20, help="timed runs per competitor")
    demo.add_argument("--out-dir", default=DEFAULT_OUT, help="where bench.json/png go")

    comp = sub.add_parser(
        "compile", help="compile a zoo model or a torch.export .pt2 file",
        description="Compile MODEL (a zoo name: lego_vgg16, lego_resnet50; or a .pt2 file "
                    "written by torch.export.save) for TARGET, check it against PyTorch on a "
                    "random input, print the Lego report and optionally export a library.")
    comp.add_argument("model", help="zoo model name, or path to a .pt2 or .onnx file")
    comp.add_argument("-o", "--output", help="write the deployable library here (e.g. model.so)")
    _add_target(comp)
    comp.add_argument("--batch", type=_positive_int, default=1, help="batch size for zoo models")
    comp.add_argument("--no-check", action="store_true", help="skip the check against PyTorch")
    comp.add_argument("--dynamic-batch", action="store_true",
                      help="the batch size is chosen at each call (--batch is only the example)")
    comp.add_argument("--compute-once", choices=["tvm", "winograd", "onednn", "auto"], default="tvm",
                      help="what computes the Lego feature maps: TVM's direct kernel (default), "
                           "TVM's Winograd kernel (3x3 stride-1 layers), oneDNN, or per "
                           "kernel whichever measures fastest now (auto)")
    _add_layout(comp)
    _add_precision(comp)
    comp.add_argument("--tuning-logs", nargs="*", default=None,
                      help="tuning log folders to apply (default: the logs shipped for this "
                           "target; give no folder to use only the default schedules)")
    _add_threads(comp)

    tune = sub.add_parser(
        "tune", help="tune a zoo model or .pt2 file with MetaSchedule (XGBoost); resumable",
        description="Tune MODEL for TARGET with MetaSchedule and the XGBoost cost model. The log "
                    "(MetaSchedule's JSON database plus manifest.json) goes to --log-dir; rerun "
                    "the same command to continue an interrupted run. compile applies the log "
                    "with --tuning-logs DIR (and shipped logs automatically).")
    tune.add_argument("model", help="zoo model name, path to a .pt2 file, or bench_layers "
                                    "(the kernels of bench's single-layer table)")
    tune.add_argument("--trials", type=_nonnegative_int, default=64,
                      help="total trial budget (default: 64)")
    tune.add_argument("--log-dir", help="where the log goes (default: "
                                        "tuning_logs/<target key>/<model>-b<batch>)")
    _add_target(tune)
    tune.add_argument("--batch", type=_positive_int, default=1, help="batch size for zoo models")
    tune.add_argument("--all-kernels", action="store_true",
                      help="also tune pooling, matmul and elementwise kernels (default: only "
                           "the fused conv kernels)")
    tune.add_argument("--winograd", action="store_true",
                      help="also tune the Winograd kernels of the 3x3 stride-1 Lego layers "
                           "(used by compile --compute-once winograd/auto)")
    _add_layout(tune)
    _add_precision(tune)
    tune.add_argument("--no-lego-pass", action="store_true",
                      help="tune the model without the Lego pass (the comparison baseline)")
    _add_remote(tune)
    _add_threads(tune)

    bench = sub.add_parser(
        "bench", help="time zoo models: lego-tvm vs PyTorch eager (Lego and dense-folded) "
                      "and TVM without the pass; writes JSON and a PNG",
        description="Whole-model benchmark, all competitors side by side in one process: "
                    "median of --repeat runs after --warmup runs, fixed thread count. With an "
                    "RPC tracker or server, the TVM-built competitors run on that device "
                    "(PyTorch does not) and the results say what the device is. With "
                    "--target cuda (or a CUDA preset), the GPU check runs on this machine's "
                    "GPU: models and layers against PyTorch on the GPU, a short tuning, the "
                    "schedule variants (docs/cuda.md).")
    bench.add_argument("--models", nargs="*", default=["lego_vgg16", "lego_resnet50"],
                       help="zoo models to time (default: both; none: only layers)")
    bench.add_argument("--no-layers", action="store_true", help="skip the per-layer benchmark")
    bench.add_argument("--no-torch-compile", action="store_true",
                       help="skip the torch.compile competitor (it compiles for minutes)")
    bench.add_argument("--scaling", action="store_true",
                       help="also time --scaling-model at batch 1, 8 and 32 on 1 and 2 threads "
                            "against PyTorch dense-folded (minutes)")
    for flag, text in (
            ("--stages", "split each layer-table kernel's time into padding, compute-once "
                         "and gather-sum, and time it on one thread"),
            ("--throughput", "serve each model from 1, 2 and 4 client threads: requests per "
                             "second, next to ONNX Runtime's"),
            ("--kernels", "time every kernel of each model alone: where the model's time goes, "
                          "with each fused kernel's share of the FMA peak")):
        bench.add_argument(flag, action="store_true", help="also " + text)
    bench.add_argument("--estimate", nargs="*", metavar="TARGET", default=None,
                       help="also estimate the models on these CPU targets without running "
                            "them (default: arm-cortex-a72 arm-cortex-a76 arm-neoverse-n1): "
                            "llvm-mca 19+'s pipeline model of each fused kernel's hot loop, "
                            "calibrated by the stage table on this machine")
    bench.add_argument("--targets", type=lambda text: [t for t in text.split(",") if t],
                       metavar="T1,T2,...", default=None,
                       help="also one report across these targets, e.g. host,arm-cortex-a72,"
                            "arm-neoverse-n1,cuda-h100: lego-tvm against the dense-folded "
                            "model on each (measured here; estimated for other CPUs; CUDA "
                            "measured only on a GPU machine)")
    bench.add_argument("--scaling-model", default="lego_resnet50")
    bench.add_argument("--scaling-batches", type=int, nargs="+", default=[1, 8, 32])
    bench.add_argument("--repeat", type=int, default=30)
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument("--out-dir", default=DEFAULT_OUT)
    _add_target(bench)
    bench.add_argument("--tuning-logs", nargs="*", default=None,
                       help="with a remote device: tuning log folders for the tuned column")
    _add_remote(bench)
    _add_threads(bench)
    return parser


def _target(args):
    """``--target``: a preset name, ``host``, or a JSON target dict."""
    text = args.target
    if not (text and text.lstrip().startswith("{")):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"lego-tvm: --target {text} is not valid JSON ({err.msg}); write it as "
                         '\'{"kind": "llvm", "mcpu": "znver3"}\'') from None


def _remote(args):
    from .tuning.remote import Remote

    try:
        return Remote.parse(args.rpc_tracker, args.rpc_key, args.rpc_server)
    except ValueError as err:
        raise SystemExit(f"lego-tvm: {err}") from None


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: the fused kernels store their input, bank and Lego maps in bf16 "
                        "and sum in fp32 (CPUs with AVX512_BF16; with --compute-once tvm)")


def _add_layout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", choices=["NCHW", "NCHWc"], default="NCHW",
                   help="tensors between fused kernels: NCHW (default) or NCHWc, blocked "
                        "channels (NCHW8c on AVX2) carried from kernel to kernel")


def _model_and_inputs(name: str, batch: int):
    """``(model or program, example inputs, a PyTorch callable for checking)``."""
    if name == "bench_layers":          # the layer benchmark's kernels, for tuning (batch 1)
        from .bench.layers import BenchLayers
        model = BenchLayers().eval()
        return model, model.example, model
    from .frontend import onnx
    if onnx.is_onnx(name):              # checked against ONNX Runtime when it is installed
        proto = onnx.load_onnx(name)
        return name, onnx.example_inputs(proto, batch=batch), onnx.onnx_runner(proto)
    from .frontend.pytorch import load_model
    return load_model(name, batch)


def _tune(args, progress) -> None:
    from .support.targets import resolve_target
    from .tuning.logs import default_log_dir
    from .tuning.search import tune

    model, inputs, _ = _model_and_inputs(args.model, args.batch)
    name = os.path.splitext(os.path.basename(args.model))[0]
    target = _target(args)
    log_dir = args.log_dir or default_log_dir(name, resolve_target(target), args.batch,
                                              not args.no_lego_pass, args.layout, args.precision)
    if args.verbose:    # MetaSchedule's per-task tables, through Python logging
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.INFO)
    manifest = tune(model, inputs, log_dir, target=target, trials=args.trials, model_name=name,
                    lego=not args.no_lego_pass, all_kernels=args.all_kernels,
                    remote=_remote(args), layout=args.layout, winograd=args.winograd,
                    precision=args.precision, progress=progress)
    print(f"{log_dir}: {manifest['trials']} records for {manifest['model']} "
          f"({manifest['target']}); compile applies them with --tuning-logs {log_dir}")
    if "checked" in manifest:
        kept = [v["kept"] for v in manifest["checked"]]
        print(f"best records timed against the default schedule: {kept.count('tuned')} kept, "
              f"{kept.count('default')} gave way to the default (kernels whose best record "
              "already was the default are not listed)")


def _compile(args, progress) -> None:
    from .check import error_against_torch
    from .compiler import compile as lego_compile
    from .support.accuracy import tolerance, verdict
    from .support.targets import parse_target, why_not_runnable_here

    target = _target(args)
    model, inputs, run_torch = _model_and_inputs(args.model, args.batch)
    logs = "auto" if args.tuning_logs is None else args.tuning_logs
    with progress.bar(None, "", "compile"):
        progress(f"compiling {args.model} for {target or 'the host CPU'}")
        compiled = lego_compile(model, inputs, target=target, tuning_logs=logs,
                                dynamic_batch=args.dynamic_batch,
                                compute_once=args.compute_once, layout=args.layout,
                                precision=args.precision, progress=progress)
    print(compiled.report)
    elsewhere = why_not_runnable_here(parse_target(compiled.target))
    if elsewhere and not args.no_check:
        print(f"not checked against PyTorch here: {elsewhere} (lego-tvm's tests check ARM "
              "builds under an emulator)")
    elif run_torch is None and not args.no_check:
        print("not checked: an ONNX model is checked against ONNX Runtime, which is not "
              "installed (pip install onnxruntime)")
    elif not args.no_check:
        error = error_against_torch(compiled, run_torch, inputs)
        reference = "ONNX Runtime" if str(args.model).endswith(".onnx") else "PyTorch"
        print(f"check against {reference} on a random input: max error / max |output| = "
              f"{error:.2e} ({verdict(error, args.precision)}"
              + (f", bf16 bound {tolerance('bf16'):.0e})" if args.precision == "bf16" else ")"))
        if verdict(error, args.precision) != "ok":
            raise SystemExit(1)
    if args.output:
        print(f"wrote {compiled.export(args.output)} (+ .json); load it with lego_tvm.load()")


def _threads(args) -> int:
    """``--threads`` if given; else what the library's policy (or ``TVM_NUM_THREADS``) set."""
    from .support.threads import set_threads, threads_in_use

    if args.threads is not None:
        set_threads(args.threads)
    return threads_in_use()


def main(argv: list[str] | None = None) -> None:
    from .support.progress import Progress

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")
    # Before anything compiles: TVM's thread pool may start during constant folding.
    threads = _threads(args)
    try:
        _run(args, threads, Progress(quiet=args.quiet))
    except _user_errors() as err:
        if args.debug:
            raise
        raise SystemExit(f"lego-tvm: {err}") from None


def _run(args, threads: int, progress) -> None:
    if args.command == "compile":
        _compile(args, progress)
    elif args.command == "tune":
        _tune(args, progress)
    elif args.command == "bench" and not args.targets and (remote := _remote(args)) is not None:
        from .bench.run import run_remote_bench
        paths = run_remote_bench(args.models, _target(args), remote, args.tuning_logs,
                                 args.repeat, args.out_dir, progress=progress)
        _wrote(paths)
    elif args.command == "bench" and _is_gpu(_target(args)):
        from .bench.gpu import bench_gpu
        if bench_gpu(args.out_dir, args.repeat, args.warmup) != 0:
            raise SystemExit(1)
    elif args.command == "bench":
        from .bench.run import run_bench
        _wrote(run_bench(args.models, not args.no_layers, args.repeat, args.warmup, threads,
                         args.out_dir, use_torch_compile=not args.no_torch_compile,
                         target=_target(args), stages=args.stages, kernels=args.kernels,
                         throughput=args.throughput, estimate=_estimate_targets(args),
                         targets=args.targets, remote=_remote(args) if args.targets else None,
                         progress=progress,
                         scaling=(args.scaling_model, args.scaling_batches) if args.scaling
                         else None))
    elif args.command == "demo":
        from .bench.run import run_bench
        _wrote(run_bench(["lego_vgg16"], False, args.repeat, 5, threads, args.out_dir,
                         use_torch_compile=False, show_report=True, progress=progress))


def _estimate_targets(args) -> list[str] | None:
    from .bench.estimate import DEFAULT_TARGETS

    if args.estimate is None:
        return None
    return list(args.estimate or DEFAULT_TARGETS)


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that name a problem with the user's input: printed as one line, no traceback."""
    from .backend.onednn import OneDNNUnavailable
    from .bench.estimate import EstimateUnavailable
    from .frontend.pytorch import ModelImportError
    from .runtime import ArtifactError, InputError
    from .support.targets import TargetError, ToolchainError
    from .tuning.logs import TuningLogError
    from .tuning.remote import RemoteError

    return (ModelImportError, OneDNNUnavailable, InputError, ArtifactError, TargetError,
            ToolchainError, TuningLogError, RemoteError, EstimateUnavailable, OSError)


def _is_gpu(target) -> bool:
    """``--target cuda`` (this GPU), a CUDA preset or a CUDA target dict."""
    from .support.targets import resolve_target

    return target == "cuda" or (target is not None and resolve_target(target).kind.name == "cuda")


def _wrote(paths: dict) -> None:
    print(f"wrote {', '.join(paths.values())}")


if __name__ == "__main__":
    main()
