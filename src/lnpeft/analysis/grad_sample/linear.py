"""Linear layers (`lnpeft.model.linears`: nn.Linear, GPT-2's Conv1D): y_t = W x_t + b, so per
sample dL/dW = sum_t dy_t^T x_t (an out x in outer-product sum) and dL/db = sum_t dy_t; a weight
stored [in, out] gets the sums in that layout.

The per-sample weight gradients are B x out x in; for BERT-large's 4096 x 1024 matrices at batch 32
that is 0.5 GB, so they are formed in chunks of samples (one einsum per chunk), squared and summed
at once, and never kept.
"""

from __future__ import annotations

import torch
from torch import nn

from lnpeft.analysis.grad_sample.utils import register_grad_sampler
from lnpeft.model.linears import linear_of

MAX_CHUNK_ELEMENTS = 1 << 26
"""Upper bound on the entries of one chunk of per-sample weight gradients (256 MB in fp32)."""


@register_grad_sampler(kind="linear")
def compute_linear_grad_sample(layer: nn.Module, activations: torch.Tensor,
                               backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    out: dict[nn.Parameter, torch.Tensor] = {}
    # flatten any sequence dims to [B, T, features]; a 2-D input is one token per sample
    # in fp32 whatever the layer's dtype (bf16 weights and autocast's bf16 activations)
    a = activations.reshape(activations.shape[0], -1, activations.shape[-1]).float()
    g = backprops.reshape(backprops.shape[0], -1, backprops.shape[-1]).float()
    if layer.weight.requires_grad:
        batch = a.shape[0]
        chunk = max(1, MAX_CHUNK_ELEMENTS // layer.weight.numel())
        acc = torch.zeros_like(layer.weight, dtype=torch.float32)
        layout = "bto,bti->bio" if linear_of(layer).transposed else "bto,bti->boi"
        for start in range(0, batch, chunk):
            per_sample = torch.einsum(layout, g[start:start + chunk], a[start:start + chunk])
            acc += per_sample.pow(2).sum(dim=0)
        out[layer.weight] = acc
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g.sum(dim=1).pow(2).sum(dim=0)
    return out
