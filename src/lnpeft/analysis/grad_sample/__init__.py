"""Batched squared per-sample gradients from one forward/backward (opacus-style kernels).

Use `SquaredGradSampler` (hooks.py) around a model: it records each hooked layer's input in the
forward pass, takes the gradient of the summed per-sample loss with respect to each layer's output
in one backward pass, and hands both to the layer type's kernel. Kernels: norm.py (every norm class
of lnpeft.model.norms; cheap, exact per-sample sums), linear.py (every linear class of lnpeft.model.linears;
per-sample outer products, chunked). A new norm or linear class is an entry in those tables; a new
kind of layer is one file with a `@register_grad_sampler(...)` kernel, imported here.
"""

from lnpeft.analysis.grad_sample import linear, norm  # noqa: F401  (registers the kernels)
from lnpeft.analysis.grad_sample.hooks import SquaredGradSampler
from lnpeft.analysis.grad_sample.linear import compute_linear_grad_sample
from lnpeft.analysis.grad_sample.norm import compute_norm_grad_sample
from lnpeft.analysis.grad_sample.utils import GRAD_SAMPLERS, KIND_SAMPLERS, get_grad_sampler, register_grad_sampler

__all__ = [
    "GRAD_SAMPLERS",
    "KIND_SAMPLERS",
    "SquaredGradSampler",
    "compute_linear_grad_sample",
    "compute_norm_grad_sample",
    "get_grad_sampler",
    "register_grad_sampler",
]
