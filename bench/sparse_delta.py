"""Prototype (bench only): train a method's partly trained tensors through small delta vectors.

`lnpeft finetune` trains sub-tensor sets (random, fisher masks) by keeping the whole tensor
trainable, masking its gradient and putting the untrained entries back after every step. For the
random control that means every encoder matrix gets a dense weight gradient, a full-size mask
multiply, AdamW state and a full-size restore each step (BERT-large: 302M gradient entries for
51,202 trained ones), so a random step costs about a full step.

Here the partly trained tensors stay frozen and each gets a delta vector over its trained entries
(W_eff = W + scatter(idx, delta)), added in a forward hook of the module:
  Linear weight  y[..., o] += x[..., i] * delta      (idx = o * in_features + i)
  LayerNorm weight  y[..., c] += xhat[..., c] * delta
  any bias       y[..., c] += delta
Autograd then forms only the k trained entries' gradients (O(tokens x k), not O(tokens x out x in))
and AdamW steps over k numbers. With weight_decay 0 (the paper's setup) the updates equal the
masked ones entry for entry (same gradients, same clipping norm, elementwise AdamW); with weight
decay the delta, not W + delta, would decay. tests/test_bench.py checks the equality.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lnpeft.methods import TrainableSet


def attach_deltas(model: nn.Module, trainable: TrainableSet) -> dict[str, nn.Parameter]:
    """Register the delta hooks; returns tensor name -> its delta parameter (zeros)."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    by_module: dict[str, dict[str, tuple[torch.Tensor, nn.Parameter]]] = {}
    deltas: dict[str, nn.Parameter] = {}
    for name, idx in trainable.partial.items():
        module_name, kind = name.rsplit(".", 1)
        p = params[name]
        delta = nn.Parameter(torch.zeros(len(idx), dtype=p.dtype, device=p.device))
        deltas[name] = delta
        by_module.setdefault(module_name, {})[kind] = (idx.to(p.device), delta)
    for module_name, entries in by_module.items():
        module = modules[module_name]
        if not isinstance(module, (nn.Linear, nn.LayerNorm)):
            raise TypeError(f"{module_name}: sparse deltas support Linear and LayerNorm, not {type(module).__name__}")
        module.register_forward_hook(_make_hook(entries))
    return deltas


def _make_hook(entries: dict[str, tuple[torch.Tensor, nn.Parameter]]):
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        if "weight" in entries:
            idx, delta = entries["weight"]
            if isinstance(module, nn.Linear):
                cols, rows = idx % module.in_features, idx // module.in_features
                contrib = x[..., cols] * delta
            else:  # LayerNorm: the normalised input without the affine part
                rows = idx
                contrib = F.layer_norm(x, module.normalized_shape, eps=module.eps)[..., idx] * delta
            output = output.index_add(-1, rows, contrib.to(output.dtype))
        if "bias" in entries:
            idx, delta = entries["bias"]
            output = output.index_add(-1, idx, delta.to(output.dtype).expand(*output.shape[:-1], -1))
        return output

    return hook


def effective_state(model: nn.Module, deltas: dict[str, nn.Parameter],
                    trainable: TrainableSet) -> dict[str, torch.Tensor]:
    """W + scatter(idx, delta) for every partly trained tensor (what the masked path trains)."""
    params = dict(model.named_parameters())
    out = {}
    for name, delta in deltas.items():
        w = params[name].detach().clone().reshape(-1)
        w[trainable.partial[name].to(w.device)] += delta.detach()
        out[name] = w.view_as(params[name])
    return out
