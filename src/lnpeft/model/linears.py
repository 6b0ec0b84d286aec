"""The linear layers lnpeft trains in parts, one registered entry per class.

`nn.Linear` stores its weight as [out, in] (y = x W^T + b); GPT-2's `Conv1D` as [in, out]
(y = x W + b). Partial training, packing and the per-sample Fisher kernel work on the [out, in]
view (`weight_out_in`) and map a flat index of the stored tensor to (out, in) here, so a new
linear class is a new entry, not a branch in each of them. Keyed by qualified class name (a look-up
imports nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lnpeft.model.class_table import lookup


@dataclass(frozen=True)
class LinearKind:
    in_attr: str
    out_attr: str
    transposed: bool = False
    """The weight is stored [in, out]."""

    def sizes(self, module: nn.Module) -> tuple[int, int]:
        """(out features, in features)."""
        return int(getattr(module, self.out_attr)), int(getattr(module, self.in_attr))

    def weight_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as [out, in] (a view)."""
        return weight.t() if self.transposed else weight

    def out_in(self, module: nn.Module, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(out, in) coordinates of flat indices into the stored weight."""
        out_n, in_n = self.sizes(module)
        if self.transposed:
            return flat % out_n, flat // out_n
        return flat // in_n, flat % in_n


LINEARS: dict[str, LinearKind] = {
    "torch.nn.modules.linear.Linear": LinearKind("in_features", "out_features"),
    "transformers.pytorch_utils.Conv1D": LinearKind("nx", "nf", transposed=True),
}


def register_linear(qualified_name: str, kind: LinearKind) -> None:
    LINEARS[qualified_name] = kind


def linear_of(module: nn.Module) -> LinearKind | None:
    """The entry of `module`'s class (or of its nearest registered base class); None otherwise."""
    return lookup(LINEARS, module)
