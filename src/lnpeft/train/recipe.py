"""How a run computes: the GPU recipe (bf16 autocast, fused AdamW, pinned host memory) or exact fp32.

`auto` is the GPU recipe on CUDA and fp32 on CPU. Each CUDA part but one has a CPU counterpart in
torch, so `gpu` on a CPU runs the same code paths (autocast to bf16 on CPU, AdamW's fused CPU
kernel) and can be tested without a GPU; pinned memory needs CUDA and stays off elsewhere.
tests/test_recipe.py checks that a run alone and a pack under `gpu` on CPU agree with fp32 within
bf16's tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RECIPES = ("auto", "fp32", "gpu")


@dataclass(frozen=True)
class Recipe:
    name: str
    bf16: bool
    """Forward passes under torch.autocast(dtype=bfloat16); losses and optimizer state stay fp32."""
    fused_adamw: bool
    pin_memory: bool
    """Batches copied to the GPU from page-locked host memory, asynchronously."""


def resolve(name: str, device: torch.device) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r}")
    if name == "auto":
        name = "gpu" if device.type == "cuda" else "fp32"
    gpu = name == "gpu"
    return Recipe(name, bf16=gpu, fused_adamw=gpu, pin_memory=gpu and device.type == "cuda")
