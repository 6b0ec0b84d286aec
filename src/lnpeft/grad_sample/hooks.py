"""Hooks that feed the kernels: record layer inputs in forward, output gradients in one backward."""

from __future__ import annotations

import torch
from torch import nn

from lnpeft.grad_sample.utils import get_grad_sampler


class SquaredGradSampler:
    """Accumulate sum over samples of squared per-sample gradients for the given layers.

    `modules` maps a prefix (e.g. `bert.encoder.layer.0.output.LayerNorm`) to its layer; results
    land in `sums[f"{prefix}.{weight|bias}"]` (float64, on the layer's device). The loss passed to
    `backward` must be the SUM of per-sample losses, so that the gradient with respect to a
    sample's activations is that sample's own gradient.
    """

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.sums: dict[str, torch.Tensor] = {}
        self._names = {id(p): f"{prefix}.{pname}" for prefix, m in modules.items()
                       for pname, p in m.named_parameters(recurse=False)}
        self._records: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for module in modules.values():
            get_grad_sampler(module)  # fail before any forward pass if a type has no kernel

    def __enter__(self) -> SquaredGradSampler:
        for module in self.modules.values():
            self._handles.append(module.register_forward_hook(self._record))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._records.clear()

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._records.append((module, inputs[0].detach(), output))

    def backward(self, loss: torch.Tensor, token_mask: torch.Tensor | None = None) -> None:
        """One backward pass to the recorded outputs only (no parameter .grad is formed).

        `token_mask` [B, T] zeroes padded positions' backprops. With BERT's attention mask they
        are zero already (padded keys get zero attention weight); the mask makes it hold for any
        encoder.
        """
        records, self._records = self._records, []
        if not records:
            raise RuntimeError("no hooked layer ran in the forward pass; nothing to differentiate")
        if len({id(m) for m, _, _ in records}) != len(records):
            # a per-sample gradient would be the sum over calls, squared once: not what kernels do
            seen, twice = set(), []
            for m, _, _ in records:
                if id(m) in seen:
                    twice.append(next(p for p, mod in self.modules.items() if mod is m))
                seen.add(id(m))
            raise RuntimeError(
                f"{twice[0]} ran more than once in one forward pass (shared weights), so its squared "
                "per-sample gradients cannot be formed from one backward pass. DeBERTa-v3 does this "
                "(share_att_key: its key and query projections also project the relative position "
                "embeddings); the Fisher stage supports DeBERTa with share_att_key false")
        outputs = [out for _, _, out in records]
        if not all(out.requires_grad for out in outputs):
            raise RuntimeError("a hooked layer's output does not require grad; "
                               "keep the encoder's parameters trainable while computing the Fisher")
        grads = torch.autograd.grad(loss, outputs, allow_unused=True)
        for (module, activations, output), backprops in zip(records, grads):
            if backprops is None:  # the layer does not influence the loss: zero information
                backprops = torch.zeros_like(output)
            if token_mask is not None and backprops.dim() == 3 and backprops.shape[:2] == token_mask.shape:
                backprops = backprops * token_mask.unsqueeze(-1).to(backprops.dtype)
            for param, value in get_grad_sampler(module)(module, activations, backprops).items():
                name = self._names[id(param)]
                value = value.detach().to(torch.float64)
                self.sums[name] = self.sums[name] + value if name in self.sums else value
