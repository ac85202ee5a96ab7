"""Small PyTorch models the tests share: a Lego block with an epilogue, ResNet bottlenecks,
and BatchNorm with random statistics."""
import torch
from torch import nn

from lego_tvm import LegoConv2d
from lego_tvm.nn.zoo import LegoBottleneck


def randomize_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return bn


class LegoBlock(nn.Module):
    """A Lego conv, then optionally BatchNorm, a residual add (second input) and ReLU."""

    def __init__(self, c, n, d, o, ratio, stride, epilogue):
        super().__init__()
        self.conv = LegoConv2d(c, n, d, o, ratio, stride=stride)
        self.bn = randomize_bn(nn.BatchNorm2d(n)) if "bn" in epilogue else None
        self.residual = "residual" in epilogue
        self.relu = "relu" in epilogue

    def forward(self, x, r=None):
        y = self.conv(x)
        if self.bn is not None:
            y = self.bn(y)
        if self.residual:
            y = y + r
        return torch.relu(y) if self.relu else y


EPILOGUES = ["", "bn", "bn+relu", "bn+residual+relu", "relu", "residual"]


def block_inputs(block: LegoBlock, batch: int, c: int, size: int) -> tuple:
    """A random input, and a random residual of the output's shape when the block adds one."""
    x = torch.randn(batch, c, size, size)
    if not block.residual:
        return (x,)
    with torch.no_grad():
        return (x, torch.randn_like(block.conv(x)))


def bottlenecks(lanes: int = 8):
    """Two ResNet bottlenecks, a projection shortcut (stride 2) then an identity one, and an
    ordinary 1x1 conv after them; every split has ``lanes`` channels or a multiple."""
    model = nn.Sequential(LegoBottleneck(4 * lanes, 2 * lanes, 2, 2, 0.5),
                          LegoBottleneck(8 * lanes, 2 * lanes, 1, 2, 0.5),
                          nn.Conv2d(8 * lanes, lanes, 1))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            randomize_bn(module)
    return model.eval()
