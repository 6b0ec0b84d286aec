"""Norms: y = (offset + weight) * xhat + bias (`lnpeft.model.norms`: LayerNorm, RMSNorm, Gemma's),
so per sample dL/dweight = sum_t dy_t * xhat_t and dL/dbias = sum_t dy_t (sums over tokens;
padded tokens carry zero backprops). Every registered norm class uses this one kernel."""

from __future__ import annotations

import torch
from torch import nn

from lnpeft.analysis.grad_sample.utils import register_grad_sampler
from lnpeft.model.norms import norm_of


@register_grad_sampler(kind="norm")
def compute_norm_grad_sample(layer: nn.Module, activations: torch.Tensor,
                             backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    out: dict[nn.Parameter, torch.Tensor] = {}
    weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
    activations, backprops = activations.float(), backprops.float()  # fp32 whatever autocast computed in
    reduce_dims = tuple(range(1, activations.dim() - weight.dim())) if weight is not None else ()
    if weight is not None and weight.requires_grad:
        # normalised input without the affine part: recompute rather than store it in forward
        xhat = norm_of(layer).normalise(layer, activations)
        per_sample = (backprops * xhat).sum(dim=reduce_dims)
        out[weight] = per_sample.pow(2).sum(dim=0)
    if bias is not None and bias.requires_grad:
        per_sample = backprops.sum(dim=reduce_dims)
        out[bias] = per_sample.pow(2).sum(dim=0)
    return out
