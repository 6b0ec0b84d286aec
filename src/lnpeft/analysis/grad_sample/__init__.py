"""Batched squared per-sample gradients from one forward/backward (opacus-style kernels).

Use `SquaredGradSampler` (hooks.py) around a model: it records each hooked layer's input in the
forward pass, takes the gradient of the summed per-sample loss with respect to each layer's output
in one backward pass, and hands both to the layer type's kernel. Kernels: layer_norm.py (cheap,
exact per-sample sums), linear.py (per-sample outer products, chunked). Add a layer type by
writing one file with a `@register_grad_sampler(...)` kernel and importing it here.
"""

from lnpeft.analysis.grad_sample import layer_norm, linear  # noqa: F401  (registers the kernels)
from lnpeft.analysis.grad_sample.hooks import SquaredGradSampler
from lnpeft.analysis.grad_sample.layer_norm import compute_layer_norm_grad_sample
from lnpeft.analysis.grad_sample.linear import compute_linear_grad_sample
from lnpeft.analysis.grad_sample.utils import GRAD_SAMPLERS, get_grad_sampler, register_grad_sampler

__all__ = [
    "GRAD_SAMPLERS",
    "SquaredGradSampler",
    "compute_layer_norm_grad_sample",
    "compute_linear_grad_sample",
    "get_grad_sampler",
    "register_grad_sampler",
]
