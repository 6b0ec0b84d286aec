"""The kernel registry: one same-signature function per layer type (opacus style).

A kernel `compute_<layer>_grad_sample(layer, activations, backprops)` receives the layer's input
(`activations`, shape [B, T, in]) and the gradient of the summed per-sample loss with respect to
its output (`backprops`, [B, T, out]), and returns, per parameter, the per-sample gradients
squared and summed over the batch (shape of the parameter): the batch's share of the empirical
Fisher sum_j g_j^2. Frozen parameters (`requires_grad=False`) are skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lnpeft.model.linears import linear_of
from lnpeft.model.norms import norm_of

GradSampler = Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[nn.Parameter, torch.Tensor]]

GRAD_SAMPLERS: dict[type[nn.Module], GradSampler] = {}
"""Kernels of particular layer classes (none today: every class is one of the kinds below)."""
KIND_SAMPLERS: dict[str, GradSampler] = {}
"""The kernel of every class of a kind: "norm" (`lnpeft.model.norms`), "linear" (`lnpeft.model.linears`)."""


def register_grad_sampler(*layer_types: type[nn.Module], kind: str | None = None) -> Callable[[GradSampler], GradSampler]:
    """Decorator: register `fn` as the squared-per-sample-gradient kernel of `layer_types`, or of
    every layer class of `kind`."""

    def decorator(fn: GradSampler) -> GradSampler:
        for layer_type in layer_types:
            GRAD_SAMPLERS[layer_type] = fn
        if kind is not None:
            KIND_SAMPLERS[kind] = fn
        return fn

    return decorator


def get_grad_sampler(layer: nn.Module) -> GradSampler:
    found = GRAD_SAMPLERS.get(type(layer))
    if found is None:
        kind = "norm" if norm_of(layer) is not None else "linear" if linear_of(layer) is not None else None
        found = KIND_SAMPLERS.get(kind) if kind else None
    if found is None:
        raise ValueError(
            f"no per-sample gradient kernel for {type(layer).__name__}: register the class in "
            "lnpeft.model.norms or lnpeft.model.linears, or add a kernel in lnpeft/analysis/grad_sample/"
        )
    return found
