"""How a run computes: exact fp32, bf16 autocast where the hardware has it, or the GPU recipe.

- `fp32`: every product in fp32; bit-identical run to run on one machine (`lnpeft.numerics`).
- `bf16`: forward passes under bf16 autocast where the device computes bf16 natively (CUDA, or a
  CPU with AVX512-BF16 or AMX: `native_bf16`), losses and optimizer state in fp32; on a CPU
  without native bf16, where autocast would emulate it slowly, the run is fp32 and says so
  (`resolve` names the recipe it became, and run.json records it). Deterministic run to run on one
  machine; its numbers differ from fp32 by bf16's rounding (bench/RESULTS.md gives the measured
  difference on the demo's runs).
- `gpu`: bf16 autocast, fused AdamW and pinned host memory. Each CUDA part but one has a CPU
  counterpart in torch, so `gpu` on a CPU runs the same code paths and can be tested without a
  GPU (tests/test_recipe.py); pinned memory needs CUDA and stays off elsewhere.
- `auto`: `gpu` on CUDA, `fp32` on a CPU (exact and the same on every CPU; choose `bf16` for speed).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

RECIPES = ("auto", "fp32", "bf16", "gpu")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags (/proc/cpuinfo) of native bf16 arithmetic: AVX512-BF16 (Cooper Lake, Zen 4 and later),
AMX (Sapphire Rapids and later)."""


@dataclass(frozen=True)
class Recipe:
    name: str
    """What `resolve` made of the asked recipe here (recorded in run.json)."""
    bf16: bool
    """Forward passes under torch.autocast(dtype=bfloat16); losses and optimizer state stay fp32."""
    fused_adamw: bool
    pin_memory: bool
    """Batches copied to the GPU from page-locked host memory, asynchronously."""


@cache
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (a flag of BF16_FLAGS in /proc/cpuinfo); never assumed."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell here, so no
        return False
    return any(f" {flag}" in flags for flag in BF16_FLAGS)


def resolve(name: str, device: torch.device) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r}")
    if name == "auto":
        name = "gpu" if device.type == "cuda" else "fp32"
    if name == "bf16":
        if device.type == "cuda" or native_bf16():
            return Recipe("bf16", bf16=True, fused_adamw=device.type == "cuda", pin_memory=False)
        return Recipe("fp32 (bf16 asked; this CPU has no native bf16)", bf16=False, fused_adamw=False,
                      pin_memory=False)
    gpu = name == "gpu"
    return Recipe(name, bf16=gpu, fused_adamw=gpu, pin_memory=gpu and device.type == "cuda")
