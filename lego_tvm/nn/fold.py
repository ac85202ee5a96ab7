"""Lego layers folded into what users would otherwise run: the equivalent dense
``nn.Conv2d`` (``fold_lego_to_dense``) or the batch-folded PyTorch formulation."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .lego_conv import BatchFoldedLegoConv2d, is_lego_module


def _dense_conv(module: nn.Module) -> nn.Conv2d:
    lego = module.lego.detach()
    m, b, d, _ = lego.shape
    o, n = module.aux_coefficients.shape[:2]
    stride = getattr(module, "stride", 1)
    padding = getattr(module, "padding", d // 2)
    choice = module.aux_combination.detach().argmax(dim=2)[..., 0, 0]          # [o, n]
    coef = torch.gather(module.aux_coefficients.detach()[..., 0, 0], 2, choice[..., None])[..., 0]
    conv = nn.Conv2d(module.in_channels, n, d, stride=stride, padding=padding, bias=False)
    weight = torch.zeros_like(conv.weight)
    for i in range(o):
        weight[:, i * b:(i + 1) * b] = coef[i][:, None, None, None] * lego[choice[i]]
    conv.weight.data.copy_(weight)
    return conv


def fold_lego_to_dense(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Lego conv replaced by the equivalent ``nn.Conv2d``.

    This is the model users would otherwise deploy: same outputs, ordinary dense convs.
    Works for our ``LegoConv2d`` and for the authors' module.
    """
    return _replace_lego_modules(model, _dense_conv)


def fold_lego_to_batch_folded(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Lego conv as ``BatchFoldedLegoConv2d``: the best
    hand-written PyTorch Lego formulation, same outputs."""
    return _replace_lego_modules(model, BatchFoldedLegoConv2d)


def _replace_lego_modules(model: nn.Module, make) -> nn.Module:
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_lego_module(child):
                setattr(parent, name, make(child))
    return model
