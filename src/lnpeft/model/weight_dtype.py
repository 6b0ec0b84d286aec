"""Frozen weights held in bf16, trained tensors in fp32 (config `model.dtype`, `lnpeft finetune --dtype`).

A 7B decoder's weights take 28 GB in fp32 and 14 GB in bf16; a parameter-efficient run trains well
under 1% of them. With `bfloat16` a run loads its init in bf16 and `hold` puts back in fp32:
- every tensor the run trains whole (the head, the norms of `layernorm`, BitFit's biases), so its
  updates and AdamW's state are fp32 (its start value was rounded to bf16 once, at loading);
- every norm's parameters, trained or not (`lnpeft.model.norms`): F.layer_norm needs its weight and
  bias in one dtype, and BitFit trains a norm's bias but not its weight. Norms are about 0.01% of a
  decoder's parameters.
Everything else stays bf16. A partly trained tensor (the random control, the Fisher subsets) is
frozen, so it stays bf16 too; its trained entries are fp32 parameters of their own
(`lnpeft.model.partial_tensors`, `lnpeft.train.packing`), started from its bf16 values and written
into it, rounded, after every step: fp32 master values of bf16 weights.

bf16 weights meet fp32 activations and fp32 trained tensors only inside products that bf16 autocast
casts (nn.Linear with BitFit's fp32 bias and a bf16 weight fails without it), so a run without
autocast (recipe fp32, or bf16 on a CPU without native bf16) is refused (`check_autocast`). Full
fine-tuning trains every weight, so it keeps fp32 weights (`check_method`): the workflow refuses
`full` in `methods` and the drift stage with `model.dtype: bfloat16`.

float16 is not offered: lnpeft's autocast computes in bf16, so fp16 weights would be converted to
bf16 (losing their extra precision) at every product, and their range (65504) is not bf16's.
With `float32` (the default) nothing is cast: a run is bit-identical to one without this option.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from lnpeft.model.norms import norm_of

WEIGHT_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""`--dtype` / `model.dtype` -> the dtype the frozen weights are held in."""


def weight_dtype(name: str) -> torch.dtype:
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {name!r}")
    return WEIGHT_DTYPES[name]


def check_method(name: str, method: str) -> None:
    """Full fine-tuning trains every weight: with frozen weights in bf16 there would be none left to
    save, and fp32 copies of all of them are what `float32` holds anyway."""
    if weight_dtype(name) != torch.float32 and method == "full":
        raise ValueError(f"--dtype {name} holds the frozen weights in {name}, but --method full trains every "
                         "weight; run full fine-tuning (and drift) with --dtype float32 (config: remove full from "
                         "methods and set drift.activate: false, or set model.dtype: float32)")


def check_autocast(name: str, autocast: bool, recipe: str) -> None:
    """A run with weights in `name` computes under bf16 autocast (module doc), or is refused."""
    if weight_dtype(name) != torch.float32 and not autocast:
        raise ValueError(f"--dtype {name} needs bf16 autocast, but the recipe here is {recipe!r}; use --recipe gpu, "
                         "or bf16 on a GPU or a CPU with native bf16 (config: training.recipe)")


def fp32_names(model: nn.Module, trained: Iterable[str]) -> set[str]:
    """The parameters `hold` keeps in fp32: the `trained` ones and every norm's."""
    names = set(trained)
    for prefix, module in model.named_modules():
        if norm_of(module) is not None:
            names |= {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)}
    return names


@torch.no_grad()
def hold(model: nn.Module, trained: Iterable[str], name: str) -> None:
    """Cast, in place, the parameters of `fp32_names(model, trained)` to fp32 and every other one to
    `name`'s dtype. Each stays the same Parameter object (`.data` is replaced); buffers are not
    touched. With float32 on an fp32 model nothing changes."""
    dtype = weight_dtype(name)
    keep = fp32_names(model, trained)
    for param_name, p in model.named_parameters():
        target = torch.float32 if param_name in keep else dtype
        if p.dtype != target:
            p.data = p.data.to(target)


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters as held (tied parameters once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())
