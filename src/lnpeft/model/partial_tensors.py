"""Train some entries of otherwise frozen tensors (the random control and Fisher subsets).

The random control trains ~51k entries scattered over every encoder matrix of BERT-large. Making
those matrices trainable and masking their gradients costs a full fine-tuning step (302M gradient
entries, full-size AdamW state and a full-size restore every step). Here a partly trained tensor
W stays frozen; its trained entries are one small parameter v (k numbers, W's values at the
start), written into W after every optimizer step (`sync_`), so every forward pass is the plain
model with W_eff. A forward hook on the owning module gives v its gradient, which is the dense
weight gradient at those k entries only:

  Linear weight entry (o, i)   dL/dv = sum over tokens of g[..., o] * x[..., i]
  norm weight entry c          dL/dv = sum over tokens of g[..., c] * xhat[..., c]
  bias entry c                 dL/dv = sum over tokens of g[..., c]

(g: gradient of the module's output; x: its input; xhat: the normalised input). Which modules are
linear layers or norms, and how each stores its weight and normalises, come from
`lnpeft.model.linears` and `lnpeft.model.norms`. The input's own
gradient flows through W_eff as usual. AdamW then steps v exactly as it would step W's entries
under a gradient mask (same gradients, same clipping norm, same decoupled decay), at O(tokens x k)
cost instead of O(tokens x out x in), and untrained entries are never written.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lnpeft.model.linears import linear_of
from lnpeft.model.methods import TrainableSet
from lnpeft.model.norms import norm_of


class _EntryGradients(torch.autograd.Function):
    """Identity on a module's output whose backward also forms the trained entries' gradients."""

    @staticmethod
    def forward(ctx, output, weight_values, bias_values, x_at, weight_rows, bias_idx):
        ctx.save_for_backward(x_at, weight_rows, bias_idx)
        ctx.has = (weight_values is not None, bias_values is not None)
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad):
        x_at, weight_rows, bias_idx = ctx.saved_tensors
        # tokens x features in 2-D: index_select along dim 1 of a 2-D tensor is several times
        # faster on CPU than along the last dim of a 3-D one
        g = grad.reshape(-1, grad.shape[-1])
        grad_w = grad_b = None
        if ctx.has[0] and ctx.needs_input_grad[1]:
            grad_w = (g.index_select(1, weight_rows).float() * x_at).sum(0)
        if ctx.has[1] and ctx.needs_input_grad[2]:
            grad_b = g.index_select(1, bias_idx).float().sum(0)
        return grad, grad_w, grad_b, None, None, None


class PartialTensors:
    """The trained entries of every partly trained tensor of `trainable`, as parameters of their own
    (`values`), hooked into `model`."""

    def __init__(self, model: nn.Module, trainable: TrainableSet) -> None:
        modules = dict(model.named_modules())
        params = dict(model.named_parameters())
        self.indices: dict[str, torch.Tensor] = {}
        self.values: dict[str, nn.Parameter] = {}
        self._params = params
        by_module: dict[str, dict[str, str]] = {}
        for name, idx in trainable.partial.items():
            p = params[name]
            module_name, kind = name.rsplit(".", 1)
            module = modules.get(module_name)
            if (module is None or (linear_of(module) is None and norm_of(module) is None)
                    or kind not in ("weight", "bias")):
                raise TypeError(f"{name}: sub-tensor training supports the weights and biases of the linear "
                                f"layers of lnpeft.model.linears and the norms of lnpeft.model.norms, not "
                                f"{type(module).__name__}.{kind}")
            if p.requires_grad:
                raise ValueError(f"{name}: a partly trained tensor must be frozen (requires_grad=False)")
            idx = idx.to(p.device)
            self.indices[name] = idx
            # fp32 whatever W's dtype: W may be held in bf16 (lnpeft.model.weight_dtype), v never is
            self.values[name] = nn.Parameter(p.detach().reshape(-1)[idx].float())
            by_module.setdefault(module_name, {})[kind] = name
        self._handles: list[RemovableHandle] = [
            modules[m].register_forward_hook(self._hook(modules[m], entries))
            for m, entries in by_module.items()]

    def _hook(self, module: nn.Module, entries: dict[str, str]):
        # index tensors are fixed: split flat Linear indices into (row, column) once, not per call
        w_name, b_name = entries.get("weight"), entries.get("bias")
        rows = cols = bias_idx = None
        linear, norm = linear_of(module), norm_of(module)
        if w_name is not None:
            idx = self.indices[w_name]
            rows, cols = linear.out_in(module, idx) if linear is not None else (idx, idx)
        if b_name is not None:
            bias_idx = self.indices[b_name]

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            if not torch.is_grad_enabled():
                return output
            x_at = None
            if w_name is not None:  # the input entries the weight gradient needs, tokens x k (small)
                x = inputs[0].detach()
                if norm is not None:  # the normalised input, the module's own statistics, no affine part
                    x = norm.normalise(module, x)
                x_at = x.reshape(-1, x.shape[-1]).index_select(1, cols).float()
            return _EntryGradients.apply(output, self.values.get(w_name), self.values.get(b_name), x_at,
                                         rows, bias_idx)

        return hook

    def parameters(self) -> list[nn.Parameter]:
        return list(self.values.values())

    def __bool__(self) -> bool:
        return bool(self.values)

    @torch.no_grad()
    def sync_(self) -> None:
        """Write the trained values into their tensors (after every optimizer step, after loading)."""
        for name, idx in self.indices.items():
            self._params[name].view(-1)[idx] = self.values[name].to(self._params[name].dtype)

    def remove_hooks(self) -> None:
        """Leave a plain model (its tensors already hold the trained values after `sync_`)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
