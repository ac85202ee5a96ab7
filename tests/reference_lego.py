"""A stand-in for the authors' released ``LegoConv2d``, written to behave exactly like it.

What matters for lego-tvm is reproduced on purpose: the constructor signature
``(in_channels, out_channels, kernel_size, n_split, n_lego)``, the parameter names and
shapes, and a ``forward`` that builds the one-hot with ``zeros(...).scatter_``, stores it
on ``self`` and sets ``requires_grad`` on it (which strict ``torch.export`` rejects), then
sums dense 1x1 merges starting from ``out = 0``. Padding is always ``kernel_size // 2``,
stride 1.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init


class AuthorsLegoConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, n_split, n_lego):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.n_split = kernel_size, n_split
        self.basic_channels = in_channels // n_split
        self.n_lego = int(out_channels * n_lego)
        self.lego = nn.Parameter(init.kaiming_normal_(
            torch.rand(self.n_lego, self.basic_channels, kernel_size, kernel_size)))
        self.aux_coefficients = nn.Parameter(init.kaiming_normal_(
            torch.rand(n_split, out_channels, self.n_lego, 1, 1)))
        self.aux_combination = nn.Parameter(init.kaiming_normal_(
            torch.rand(n_split, out_channels, self.n_lego, 1, 1)))

    def forward(self, x):
        self.proxy_combination = torch.zeros(self.aux_combination.size()).to(
            self.aux_combination.device)
        self.proxy_combination.scatter_(2, self.aux_combination.argmax(dim=2, keepdim=True), 1)
        self.proxy_combination.requires_grad = True
        out = 0
        for i in range(self.n_split):
            part = x[:, i * self.basic_channels:(i + 1) * self.basic_channels]
            lego_feature = F.conv2d(part, self.lego, padding=self.kernel_size // 2)
            kernel = self.aux_coefficients[i] * self.proxy_combination[i]
            out = out + F.conv2d(lego_feature, kernel)
        return out
