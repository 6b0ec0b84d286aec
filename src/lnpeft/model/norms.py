"""The normalisation layers lnpeft trains, one registered entry per class.

Every norm the paper's methods touch computes y = (offset + w) * xhat (+ b): xhat is the input
normalised without any affine part, w and b its trained tensors. What differs between classes is
how xhat is formed and the offset:

  LayerNorm (BERT, GPT-2)          xhat = (x - mean) / sqrt(var + eps)   offset 0, bias
  RMSNorm (Llama, Mistral, Qwen2)  xhat = x / sqrt(mean(x^2) + eps)      offset 0, no bias
  Gemma 1-3's RMSNorm              as RMSNorm                             offset 1: w = 0 is "untrained"

The methods, partial training (`lnpeft.model.partial_tensors`), packing (`lnpeft.train.packing`),
the per-sample Fisher kernel and the seeded head init read this table, so a new norm class is a new
entry here, not a branch in each of them. Classes are keyed by their qualified name: looking one up
never imports the transformers module that defines it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lnpeft.model.class_table import lookup


@dataclass(frozen=True)
class Norm:
    normalise: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    """xhat in fp32: the input normalised, no affine part."""
    offset: float = 0.0
    """y = (offset + w) * xhat + b; the weight's "untrained" value is 1 - offset."""

    def affine(self, xhat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        scale = weight + self.offset if self.offset else weight
        return xhat * scale if bias is None else xhat * scale + bias

    @property
    def unit_weight(self) -> float:
        """The weight that leaves xhat unscaled (BERT's init of a LayerNorm: 1; Gemma's: 0)."""
        return 1.0 - self.offset


def _layer_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.float(), module.normalized_shape, None, None, module.eps)


def _rms(eps_attr: str) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    def normalise(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        eps = getattr(module, eps_attr)
        x = x.float()
        if eps is None:  # torch.nn.RMSNorm's default
            eps = torch.finfo(x.dtype).eps
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    return normalise


NORMS: dict[str, Norm] = {
    "torch.nn.modules.normalization.LayerNorm": Norm(_layer_norm),
    "torch.nn.modules.normalization.RMSNorm": Norm(_rms("eps")),
    "transformers.models.llama.modeling_llama.LlamaRMSNorm": Norm(_rms("variance_epsilon")),
    "transformers.models.mistral.modeling_mistral.MistralRMSNorm": Norm(_rms("variance_epsilon")),
    "transformers.models.qwen2.modeling_qwen2.Qwen2RMSNorm": Norm(_rms("variance_epsilon")),
    "transformers.models.gemma.modeling_gemma.GemmaRMSNorm": Norm(_rms("eps"), offset=1.0),
    "transformers.models.gemma2.modeling_gemma2.Gemma2RMSNorm": Norm(_rms("eps"), offset=1.0),
    "transformers.models.gemma3.modeling_gemma3.Gemma3RMSNorm": Norm(_rms("eps"), offset=1.0),
}
"""Qualified class name -> its entry; subclasses of a registered class share its entry."""


def register_norm(qualified_name: str, norm: Norm) -> None:
    NORMS[qualified_name] = norm


def norm_of(module: nn.Module) -> Norm | None:
    """The entry of `module`'s class (or of its nearest registered base class); None if not a norm."""
    return lookup(NORMS, module)
