"""Linear layers that run more than once in one forward pass (DeBERTa-v3, `share_att_key`: its key
and query projections also project the relative position embeddings, a tensor the batch shares).

A sample's gradient is then the sum over calls, squared once, so per-sample gradients are formed
per call, unsquared, and added. A call on a per-sample input (rows = samples) takes the ordinary
backprops; a call on a shared input (one row for the whole batch) needs each sample's own
gradient with respect to its output, which one vmapped backward pass of the per-sample losses
gives (`torch.autograd.grad(..., is_grads_batched=True)`), for all such calls at once.
"""

from __future__ import annotations

import torch
from torch import nn

CHUNK = 8
"""Samples per vmapped backward pass: its memory is about CHUNK times one backward pass's."""


def shared_backprops(losses: torch.Tensor, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """[B, *output.shape] per output: d losses[b] / d output, for outputs the batch shares."""
    n = losses.shape[0]
    eye = torch.eye(n, dtype=losses.dtype, device=losses.device)
    parts: list[list[torch.Tensor]] = [[] for _ in outputs]
    for start in range(0, n, CHUNK):
        rows = eye[start:start + CHUNK]
        grads = torch.autograd.grad(losses, outputs, grad_outputs=rows, is_grads_batched=True,
                                    retain_graph=True, allow_unused=True)
        for i, (g, out) in enumerate(zip(grads, outputs)):
            parts[i].append(out.new_zeros(len(rows), *out.shape) if g is None else g)
    return [torch.cat(p) for p in parts]


def linear_per_sample(layer: nn.Module, calls: list[tuple[torch.Tensor, torch.Tensor]],
                      batch: int) -> dict[nn.Parameter, torch.Tensor]:
    """Squared per-sample gradients (summed over the batch) of a Linear run once per (input,
    backprops) in `calls`. A per-sample call has input [B, T, in] and backprops [B, T, out]; a
    shared call has input [1, T, in] (or [T, in]) and backprops [B, 1, T, out] (shared_backprops)."""
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"a {type(layer).__name__} runs more than once in one forward pass; lnpeft's "
                         "per-sample gradients support only Linear layers used twice")
    weight = torch.zeros(batch, *layer.weight.shape, dtype=torch.float64, device=layer.weight.device)
    bias = None if layer.bias is None else torch.zeros(batch, *layer.bias.shape, dtype=torch.float64,
                                                       device=layer.bias.device)
    for activations, backprops in calls:
        g = backprops.reshape(batch, -1, backprops.shape[-1]).double()
        if activations.shape[0] == batch and backprops.shape[0] == batch and backprops.dim() == activations.dim():
            a = activations.reshape(batch, -1, activations.shape[-1]).double()
            weight += torch.einsum("bto,bti->boi", g, a)
        else:  # the shared input: one set of rows, every sample its own backprops
            a = activations.reshape(-1, activations.shape[-1]).double()
            weight += torch.einsum("bto,ti->boi", g, a)
        if bias is not None:
            bias += g.sum(dim=1)
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = weight.pow(2).sum(dim=0)
    if bias is not None and layer.bias.requires_grad:
        out[layer.bias] = bias.pow(2).sum(dim=0)
    return out
