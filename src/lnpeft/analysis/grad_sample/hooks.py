"""Hooks that feed the kernels: record layer inputs in forward, output gradients in one backward."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch import nn

from lnpeft.analysis.grad_sample.shared import linear_per_sample, shared_backprops
from lnpeft.analysis.grad_sample.utils import get_grad_sampler


class SquaredGradSampler:
    """Accumulate sum over samples of squared per-sample gradients for the given layers.

    `modules` maps a prefix (e.g. `bert.encoder.layer.0.output.LayerNorm`) to its layer; results
    land in `sums[f"{prefix}.{weight|bias}"]` (float64, on the layer's device). The loss passed to
    `backward` must be the SUM of per-sample losses, so that the gradient with respect to a
    sample's activations is that sample's own gradient. `reduce[name]`, where given, shrinks a
    batch's squared sums of that parameter before they are added (e.g. to one sum per component), so
    what is kept between batches is its result, not a tensor of the parameter's size.
    """

    def __init__(self, modules: dict[str, nn.Module],
                 reduce: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> None:
        self.modules = modules
        self.reduce = reduce or {}
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

        `loss` is the per-sample losses [B], or their sum (enough unless a layer runs on a tensor
        the batch shares: `lnpeft.analysis.grad_sample.shared`). `token_mask` [B, T] zeroes padded
        positions' backprops. With BERT's attention mask they are zero already (padded keys get
        zero attention weight); the mask makes it hold for any encoder.
        """
        records, self._records = self._records, []
        if not records:
            raise RuntimeError("no hooked layer ran in the forward pass; nothing to differentiate")
        losses = loss if loss.dim() == 1 else None
        total = loss.sum() if losses is not None else loss
        # samples: the losses', else the mask's rows, else those of the first hooked layer's output
        batch = len(losses) if losses is not None else (
            token_mask.shape[0] if token_mask is not None else records[0][2].shape[0])
        calls = Counter(id(m) for m, _, _ in records)
        # a layer run twice, or on rows that are not the batch's samples, needs the per-call path
        shared = [i for i, (_, _, out) in enumerate(records) if out.shape[0] != batch]
        repeated = {id(m) for m, _, _ in records if calls[id(m)] > 1} | {id(records[i][0]) for i in shared}
        if shared and losses is None:
            name = next(p for p, mod in self.modules.items() if id(mod) == id(records[shared[0]][0]))
            raise RuntimeError(f"{name} ran on a tensor the batch shares; pass the per-sample losses [B] "
                               "to backward, not their sum")
        outputs = [out for _, _, out in records]
        if not all(out.requires_grad for out in outputs):
            raise RuntimeError("a hooked layer's output does not require grad; "
                               "keep the encoder's parameters trainable while computing the Fisher")
        per_sample = [i for i in range(len(records)) if i not in shared]
        grads: list[torch.Tensor | None] = [None] * len(records)
        found = torch.autograd.grad(total, [outputs[i] for i in per_sample], allow_unused=True,
                                    retain_graph=bool(shared))
        for i, g in zip(per_sample, found):
            grads[i] = g
        if shared:
            for i, g in zip(shared, shared_backprops(losses, [outputs[i] for i in shared])):
                grads[i] = g
        grouped: dict[int, tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        for i, ((module, activations, output), backprops) in enumerate(zip(records, grads)):
            if backprops is None:  # the layer does not influence the loss: zero information
                backprops = torch.zeros_like(output)
            if token_mask is not None and backprops.dim() == 3 and backprops.shape[:2] == token_mask.shape:
                backprops = backprops * token_mask.unsqueeze(-1).to(backprops.dtype)
            if id(module) in repeated:
                grouped.setdefault(id(module), (module, []))[1].append((activations, backprops))
                continue
            self._add(get_grad_sampler(module)(module, activations, backprops))
        for module, module_calls in grouped.values():
            self._add(linear_per_sample(module, module_calls, batch))

    def _add(self, squared: dict[nn.Parameter, torch.Tensor]) -> None:
        for param, value in squared.items():
            name = self._names[id(param)]
            value = value.detach().to(torch.float64)
            if name in self.reduce:
                value = self.reduce[name](value)
            self.sums[name] = self.sums[name] + value if name in self.sums else value
