"""LayerNorm: y = xhat * weight + bias, so per sample dL/dweight = sum_t dy_t * xhat_t and
dL/dbias = sum_t dy_t (sums over tokens; padded tokens carry zero backprops)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lnpeft.analysis.grad_sample.utils import register_grad_sampler


@register_grad_sampler(nn.LayerNorm)
def compute_layer_norm_grad_sample(layer: nn.LayerNorm, activations: torch.Tensor,
                                   backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    out: dict[nn.Parameter, torch.Tensor] = {}
    reduce_dims = tuple(range(1, activations.dim() - len(layer.normalized_shape)))
    if layer.weight is not None and layer.weight.requires_grad:
        # normalised input without the affine part: recompute rather than store it in forward
        xhat = F.layer_norm(activations, layer.normalized_shape, eps=layer.eps)
        per_sample = (backprops * xhat).sum(dim=reduce_dims)
        out[layer.weight] = per_sample.pow(2).sum(dim=0)
    if layer.bias is not None and layer.bias.requires_grad:
        per_sample = backprops.sum(dim=reduce_dims)
        out[layer.bias] = per_sample.pow(2).sum(dim=0)
    return out
