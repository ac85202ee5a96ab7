"""The LegoNet convolution as a PyTorch module (Yang et al., ICML 2019).

Parameter names, shapes, initialisation and forward follow the authors' released
``LegoConv2d`` so that their checkpoints load unchanged. ``stride`` and ``padding`` are
our extension; their defaults (1 and ``kernel_size // 2``) are the reference behaviour.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init


class LegoConv2d(nn.Module):
    """A convolution built from ``m = int(out_channels * n_lego)`` shared Lego filters.

    The input channels are cut into ``n_split`` parts of ``in_channels // n_split``
    channels; every part is convolved with the same filter bank ``lego`` and each output
    channel takes one Lego feature map per split (``argmax`` of ``aux_combination``),
    scaled by ``aux_coefficients``, summed over splits.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 n_split: int = 2, n_lego: float = 0.5, stride: int = 1,
                 padding: int | None = None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.n_split = kernel_size, n_split
        self.basic_channels = in_channels // n_split
        self.n_lego = int(out_channels * n_lego)
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        if self.basic_channels < 1 or self.n_lego < 1:
            raise ValueError(
                f"LegoConv2d({in_channels}, {out_channels}, n_split={n_split}, n_lego={n_lego}) "
                f"has {self.basic_channels} channels per split and {self.n_lego} Lego filters; "
                "both must be at least 1")
        # Same calls in the same order as the reference, so a seeded run gives the same values.
        self.lego = nn.Parameter(init.kaiming_normal_(
            torch.rand(self.n_lego, self.basic_channels, kernel_size, kernel_size)))
        self.aux_coefficients = nn.Parameter(init.kaiming_normal_(
            torch.rand(n_split, out_channels, self.n_lego, 1, 1)))
        self.aux_combination = nn.Parameter(init.kaiming_normal_(
            torch.rand(n_split, out_channels, self.n_lego, 1, 1)))

    def merge_kernels(self) -> torch.Tensor:
        """The ``[o, n, m, 1, 1]`` merge kernels: coefficients times the one-hot choice."""
        choice = self.aux_combination.argmax(dim=2, keepdim=True)
        one_hot = torch.zeros_like(self.aux_combination).scatter(2, choice, 1.0)
        return self.aux_coefficients * one_hot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = self.merge_kernels()
        b = self.basic_channels
        out = 0
        for i in range(self.n_split):
            lego_feature = F.conv2d(x[:, i * b:(i + 1) * b], self.lego,
                                    stride=self.stride, padding=self.padding)
            out = out + F.conv2d(lego_feature, kernels[i])
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"n_split={self.n_split}, n_lego={self.n_lego}, stride={self.stride}, "
                f"padding={self.padding}")


class BatchFoldedLegoConv2d(nn.Module):
    """The fastest plain-PyTorch Lego layer we know: fold the splits into the batch, run one
    conv with the bank (compute once), then gather the chosen maps, scale and sum.

    Built from a trained ``LegoConv2d`` (ours or the authors'); same output. A benchmark
    competitor: what a careful user would hand-write without lego-tvm.
    """

    def __init__(self, lego: nn.Module):
        super().__init__()
        o, n, m = lego.aux_coefficients.shape[:3]
        choice = lego.aux_combination.detach().argmax(dim=2)[..., 0, 0]            # [o, n]
        coef = torch.gather(lego.aux_coefficients.detach()[..., 0, 0], 2, choice[..., None])
        self.register_buffer("bank", lego.lego.detach().clone())
        self.register_buffer("flat_index", (choice + m * torch.arange(o)[:, None]).reshape(-1))
        self.register_buffer("coef", coef.reshape(1, o, n, 1, 1))
        self.splits, self.split_channels, self.lego_filters = o, lego.basic_channels, m
        self.stride = getattr(lego, "stride", 1)
        self.padding = getattr(lego, "padding", lego.lego.shape[-1] // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        o, b = self.splits, self.split_channels
        folded = x[:, :o * b].reshape(batch * o, b, height, width)
        maps = F.conv2d(folded, self.bank, stride=self.stride, padding=self.padding)
        maps = maps.reshape(batch, o * self.lego_filters, *maps.shape[2:])
        chosen = maps.index_select(1, self.flat_index)
        return (chosen.reshape(batch, o, -1, *maps.shape[2:]) * self.coef).sum(1)


def is_lego_module(module: nn.Module) -> bool:
    """True for our ``LegoConv2d`` and for the authors' module (same parameters)."""
    return all(hasattr(module, a) for a in ("lego", "aux_coefficients", "aux_combination",
                                            "n_split", "basic_channels"))
