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

GradSampler = Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[nn.Parameter, torch.Tensor]]

GRAD_SAMPLERS: dict[type[nn.Module], GradSampler] = {}


def register_grad_sampler(*layer_types: type[nn.Module]) -> Callable[[GradSampler], GradSampler]:
    """Decorator: register `fn` as the squared-per-sample-gradient kernel of `layer_types`."""

    def decorator(fn: GradSampler) -> GradSampler:
        for layer_type in layer_types:
            GRAD_SAMPLERS[layer_type] = fn
        return fn

    return decorator


def get_grad_sampler(layer: nn.Module) -> GradSampler:
    try:
        return GRAD_SAMPLERS[type(layer)]
    except KeyError:
        raise ValueError(
            f"no per-sample gradient kernel for {type(layer).__name__}; registered: "
            f"{', '.join(t.__name__ for t in GRAD_SAMPLERS)} (add one in lnpeft/analysis/grad_sample/)"
        ) from None
