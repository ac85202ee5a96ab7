"""The conformance corpus: outside models compiled by lego-tvm and by plain TVM 0.27
(``torch.export`` -> ``from_exported_program`` -> ``tvm.compile`` -> Relax VM), both against
PyTorch on random inputs, at batch 1, at batch 3 and with a batch chosen at call time.

- ``OPS``: the kinds of PyTorch modules TVM's own frontend tests use
  (``tests/python/relax/test_frontend_from_exported_program.py`` in apache/tvm: unary ops,
  activations, pooling, resampling, normalization, shape ops, reductions, conv variants);
- ``ARCHITECTURES``: small blocks written after torchvision and timm (ResNet, MobileNetV2 /
  V3, EfficientNet, ConvNeXt, DenseNet, SqueezeNet, ShuffleNet, a U-Net, RegNet);
- each architecture again with Lego layers in place of its 3x3 convolutions.

A case passes when lego-tvm matches PyTorch, or when plain TVM fails or is wrong too and
lego-tvm raises an error of its own saying why (never a wrong answer). ``python
tests/corpus.py`` runs every case and mode and prints the counts; the tests
(``test_conformance_corpus.py``) run them in CI.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import lego_tvm
from lego_tvm.support.accuracy import TOLERANCE, max_relative_error

MODES = ("batch 1", "batch 3", "dynamic batch")


class Op(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def conv_bn(c_in, c_out, k=3, stride=1, groups=1, act=nn.ReLU, lego=False):
    conv = (lego_tvm.LegoConv2d(c_in, c_out, k, stride=stride) if lego and k == 3 and groups == 1
            else nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False))
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), act() if act else nn.Identity())


class SqueezeExcite(nn.Module):
    def __init__(self, c, gate=nn.Sigmoid, act=nn.ReLU):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, max(4, c // 4), 1), nn.Conv2d(max(4, c // 4), c, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class ResNetBasic(nn.Module):
    def __init__(self, c=16, lego=False):
        super().__init__()
        self.a, self.b = conv_bn(c, c, lego=lego), conv_bn(c, c, act=None, lego=lego)

    def forward(self, x):
        return F.relu(self.b(self.a(x)) + x)


class ResNetBottleneck(nn.Module):
    def __init__(self, c=16, lego=False):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c, c // 2, 1), conv_bn(c // 2, c // 2, lego=lego),
                                  conv_bn(c // 2, 2 * c, 1, act=None))
        self.shortcut = conv_bn(c, 2 * c, 1, act=None)

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class InvertedResidual(nn.Module):       # MobileNetV2
    def __init__(self, c=16, lego=False):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c, 4 * c, 1, act=nn.ReLU6),
                                  conv_bn(4 * c, 4 * c, groups=4 * c, act=nn.ReLU6),
                                  conv_bn(4 * c, c, 1, act=None))
        self.lego = conv_bn(c, c, lego=True) if lego else nn.Identity()

    def forward(self, x):
        return self.lego(x + self.body(x))


class SqueezeExciteBlock(nn.Module):    # MobileNetV3 (hardswish) and EfficientNet MBConv (SiLU)
    def __init__(self, c=16, lego=False, expand=2, act=nn.Hardswish, gate=nn.Hardsigmoid):
        super().__init__()
        wide = expand * c
        self.body = nn.Sequential(conv_bn(c, wide, 1, act=act),
                                  conv_bn(wide, wide, groups=wide, act=act),
                                  SqueezeExcite(wide, gate=gate, act=act if gate is nn.Sigmoid
                                                else nn.ReLU),
                                  conv_bn(wide, c, 1, act=None))
        self.lego = conv_bn(c, c, act=act, lego=True) if lego else nn.Identity()

    def forward(self, x):
        return self.lego(x + self.body(x))


def mbconv(c=16, lego=False):
    return SqueezeExciteBlock(c, lego, expand=4, act=nn.SiLU, gate=nn.Sigmoid)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c=16, lego=False):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.up, self.down = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c))
        self.lego = lego_tvm.LegoConv2d(c, c, 3) if lego else nn.Identity()

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.gamma * self.down(F.gelu(self.up(y)))
        return self.lego(x + y.permute(0, 3, 1, 2))


class DenseBlock(nn.Module):
    def __init__(self, c=16, lego=False, growth=8):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(c + i * growth), nn.ReLU(),
                          nn.Conv2d(c + i * growth, 2 * growth, 1, bias=False),
                          nn.BatchNorm2d(2 * growth), nn.ReLU(),
                          lego_tvm.LegoConv2d(2 * growth, growth, 3) if lego
                          else nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False))
            for i in range(2))
        self.transition = nn.Sequential(nn.BatchNorm2d(c + 2 * growth), nn.ReLU(),
                                        nn.Conv2d(c + 2 * growth, c, 1), nn.AvgPool2d(2))

    def forward(self, x):
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.transition(x)


class Fire(nn.Module):                   # SqueezeNet
    def __init__(self, c=16, lego=False):
        super().__init__()
        self.squeeze = nn.Conv2d(c, c // 2, 1)
        self.e1 = nn.Conv2d(c // 2, c, 1)
        self.e3 = (lego_tvm.LegoConv2d(c // 2, c, 3) if lego
                   else nn.Conv2d(c // 2, c, 3, padding=1))

    def forward(self, x):
        s = F.relu(self.squeeze(x))
        return F.max_pool2d(torch.cat([F.relu(self.e1(s)), F.relu(self.e3(s))], 1), 3, 2,
                            ceil_mode=True)


class ShuffleUnit(nn.Module):            # ShuffleNetV2, stride 1
    def __init__(self, c=16, lego=False):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(conv_bn(h, h, 1), conv_bn(h, h, groups=h, act=None),
                                    conv_bn(h, h, 1))
        self.lego = conv_bn(c, c, lego=True) if lego else nn.Identity()

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a, self.branch(b)], 1)
        n, c, hh, ww = y.shape
        y = y.view(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)
        return self.lego(y)


class UNet(nn.Module):
    def __init__(self, c=16, lego=False):
        super().__init__()
        self.down1, self.down2 = conv_bn(c, c, lego=lego), conv_bn(c, 2 * c, lego=lego)
        self.mid = conv_bn(2 * c, 2 * c, lego=lego)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.resize = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.out = conv_bn(3 * c, c, lego=lego)

    def forward(self, x):
        a = self.down1(x)
        b = self.mid(self.down2(F.max_pool2d(a, 2)))
        return self.out(torch.cat([a, self.up(b), self.resize(b)[:, :a.shape[1]]], 1))


class RegNetY(nn.Module):
    def __init__(self, c=16, lego=False):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c, c, 1), conv_bn(c, c, groups=c // 8),
                                  SqueezeExcite(c), conv_bn(c, c, 1, act=None))
        self.lego = conv_bn(c, c, lego=True) if lego else nn.Identity()

    def forward(self, x):
        return self.lego(F.relu(x + self.body(x)))


ARCHITECTURES = {
    "ResNet basic block": ResNetBasic, "ResNet bottleneck": ResNetBottleneck,
    "MobileNetV2 inverted residual": InvertedResidual, "MobileNetV3 block": SqueezeExciteBlock,
    "EfficientNet MBConv": mbconv, "ConvNeXt block": ConvNeXtBlock, "DenseNet block": DenseBlock,
    "SqueezeNet fire": Fire, "ShuffleNetV2 unit": ShuffleUnit, "U-Net": UNet,
    "RegNetY block": RegNetY,
}

IMAGE = (16, 8, 8)       # channels, height, width of every image case

OPS = {
    **{f"torch.{name}": Op(getattr(torch, name)) for name in (
        "abs", "ceil", "cos", "erf", "exp", "floor", "neg", "round", "sigmoid",
        "sin", "sign", "tanh", "trunc")},
    "sqrt of abs": Op(lambda x: torch.sqrt(x.abs())),
    "rsqrt of abs": Op(lambda x: torch.rsqrt(x.abs() + 0.1)),
    "log of abs": Op(lambda x: torch.log(x.abs() + 1)),
    **{f"nn.{name}": getattr(nn, name)() for name in (
        "CELU", "ELU", "GELU", "Hardsigmoid", "Hardswish", "Hardtanh", "LeakyReLU",
        "LogSigmoid", "Mish", "PReLU", "ReLU6", "SELU", "SiLU", "Softplus", "Softsign",
        "Tanhshrink")},
    "GELU tanh": nn.GELU(approximate="tanh"),
    "Softmax": nn.Softmax(dim=1), "LogSoftmax": nn.LogSoftmax(dim=1),
    "MaxPool2d": nn.MaxPool2d(2), "MaxPool2d ceil": nn.MaxPool2d(3, 2, ceil_mode=True),
    "AvgPool2d pad": nn.AvgPool2d(3, 1, 1), "AdaptiveAvgPool2d": nn.AdaptiveAvgPool2d(3),
    "adaptive_max_pool2d": Op(lambda x: F.adaptive_max_pool2d(x, 2)),
    "Upsample nearest": nn.Upsample(scale_factor=2), "Upsample bilinear":
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
    "interpolate bicubic": Op(lambda x: F.interpolate(x, size=(5, 7), mode="bicubic")),
    "grid_sample": Op(lambda x: F.grid_sample(
        x, torch.tanh(x[:, :2].permute(0, 2, 3, 1)), align_corners=False)),
    "PixelShuffle": nn.PixelShuffle(2), "PixelUnshuffle": nn.PixelUnshuffle(2),
    "ChannelShuffle": nn.ChannelShuffle(4),
    "BatchNorm2d": nn.BatchNorm2d(16), "LayerNorm": nn.LayerNorm([8, 8]),
    "GroupNorm": nn.GroupNorm(4, 16), "InstanceNorm2d": nn.InstanceNorm2d(16, affine=True),
    "Conv2d dilated": nn.Conv2d(16, 8, 3, dilation=2), "Conv2d grouped": nn.Conv2d(16, 16, 3, groups=4),
    "Conv2d padding same": nn.Conv2d(16, 8, 3, padding="same"),
    "Conv2d reflect": nn.Conv2d(16, 8, 3, padding=1, padding_mode="reflect"),
    "ConvTranspose2d": nn.ConvTranspose2d(16, 8, 3, stride=2),
    "Conv1d over rows": Op(lambda x: F.conv1d(x.flatten(2), torch.ones(4, 16, 3) / 9)),
    "Linear": nn.Sequential(nn.Flatten(), nn.Linear(16 * 64, 10)),
    "matmul": Op(lambda x: x @ x.transpose(-1, -2)),
    "einsum": Op(lambda x: torch.einsum("bchw,bcwk->bchk", x, x)),
    "pad reflect": Op(lambda x: F.pad(x, (1, 2, 0, 1), mode="reflect")),
    "pad replicate": Op(lambda x: F.pad(x, (1, 1, 2, 0), mode="replicate")),
    "flip + roll": Op(lambda x: torch.roll(torch.flip(x, [2]), 3, dims=3)),
    "split + stack": Op(lambda x: torch.stack(x.split(4, dim=1), dim=1).sum(1)),
    "narrow + repeat": Op(lambda x: x.narrow(1, 2, 4).repeat(1, 2, 1, 1)),
    "squeeze + expand": Op(lambda x: x.mean(1, keepdim=True).expand(-1, 16, -1, -1)),
    "permute + reshape": Op(lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 16)),
    "sum / mean / var": Op(lambda x: x.sum((2, 3)) + x.mean(1).sum((1, 2))[:, None] + x.var(3).mean(2)),
    "amax + logsumexp": Op(lambda x: x.amax(1) + torch.logsumexp(x, 1)),
    "max over a dim": Op(lambda x: torch.max(x, dim=1).values),
    "topk": Op(lambda x: torch.topk(x.flatten(1), 5).values),
    "cumsum": Op(lambda x: torch.cumsum(x, dim=2)),
    "argmax as float": Op(lambda x: x.argmax(1).float()),
    "norm": Op(lambda x: torch.linalg.vector_norm(x, dim=(2, 3))),
    "where + clamp": Op(lambda x: torch.where(x > 0, x.clamp(max=0.5), x * 0.1)),
}


def cases() -> dict[str, object]:
    """name -> a function making the model (fresh, in eval mode, weights random)."""
    made = {f"op {name}": (lambda m=module: m) for name, module in OPS.items()}
    for name, arch in ARCHITECTURES.items():
        made[name] = lambda a=arch: a()
        made[f"{name} with Lego layers"] = lambda a=arch: a(lego=True)
    return made


@dataclass
class Result:
    case: str
    mode: str
    tvm: str        # "ok", "wrong (error e)", "fails: ...", "n/a: ..."
    lego_tvm: str   # the same, or "refused: <lego-tvm's error>"
    verdict: str    # "pass", "tvm's failure" (lego-tvm refused clearly), "LEGO-TVM FAILURE"


def _randomized(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _outcome(run, reference: np.ndarray) -> str:
    try:
        out = run()
    except Exception as err:  # noqa: BLE001 - any failure is an outcome here
        return f"fails: {type(err).__name__}: {str(err).strip().splitlines()[-1][:160] if str(err).strip() else ''}"
    if out.shape != reference.shape:
        return f"wrong (shape {out.shape}, PyTorch {reference.shape})"
    error = max_relative_error(out, reference)
    return "ok" if error <= TOLERANCE else f"wrong (error {error:.1e})"


def _plain_tvm(model, trace, x, dynamic: bool) -> np.ndarray:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from lego_tvm.support.targets import host_target

    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    program = torch.export.export(model, (trace,), dynamic_shapes=shapes)
    vm = relax.VirtualMachine(tvm.compile(from_exported_program(program), host_target()),
                              tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()))
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def check(name: str, mode: str) -> Result:
    model = _randomized(cases()[name]())
    batch = 1 if mode == "batch 1" else 3
    x = torch.randn(batch, *IMAGE)
    with torch.no_grad():
        reference = model(x).numpy()
    dynamic = mode == "dynamic batch"
    trace = torch.randn(2, *IMAGE) if dynamic else x      # export specializes batch 1
    tvm_result = _outcome(lambda: _plain_tvm(model, trace, x, dynamic), reference)
    try:
        compiled = lego_tvm.compile(model, (trace,), tuning_logs=None, dynamic_batch=dynamic)
    except Exception as err:  # noqa: BLE001
        ours = type(err).__module__.startswith("lego_tvm")
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        lego_result = (f"refused: {type(err).__name__}: {first}" if ours
                       else f"fails: {type(err).__name__}: {first}")
    else:
        lego_result = _outcome(lambda: compiled(x.numpy()), reference)
    if lego_result == "ok":
        verdict = "pass"
    elif lego_result.startswith("refused") and tvm_result != "ok":
        verdict = "tvm's failure"
    else:
        verdict = "LEGO-TVM FAILURE"
    return Result(name, mode, tvm_result, lego_result, verdict)


def main() -> None:
    """Every case in every mode: a line each, the counts, and ``--json PATH`` for the record."""
    results = []
    names = list(cases())
    for number, name in enumerate(names, 1):
        for mode in MODES:
            result = check(name, mode)
            results.append(result)
            print(f"[{number}/{len(names)}] {name} ({mode}): {result.verdict}; TVM {result.tvm}; "
                  f"lego-tvm {result.lego_tvm}", flush=True)
    counts = {v: sum(r.verdict == v for r in results)
              for v in ("pass", "tvm's failure", "LEGO-TVM FAILURE")}
    tvm_fails = sum(r.tvm != "ok" for r in results)
    refused = counts["tvm's failure"]
    print(f"\n{len(results)} checks ({len(names)} models x {len(MODES)} modes): {counts['pass']} "
          f"pass; plain TVM fails or is wrong in {tvm_fails}, where lego-tvm refuses with its "
          f"own error in {refused}; lego-tvm failures: {counts['LEGO-TVM FAILURE']}")
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    sys.exit(1 if counts["LEGO-TVM FAILURE"] else 0)


if __name__ == "__main__":
    main()
