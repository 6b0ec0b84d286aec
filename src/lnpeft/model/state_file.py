"""A run's trained state on disk (`state.safetensors`): whole tensors, and for a partly trained
tensor its flat `name@indices` with `name@values`. Written by training, read back by export and tests."""

from __future__ import annotations

from pathlib import Path

import torch

from lnpeft.data.artifacts import atomic_path


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write `state` atomically: a reader never sees a half-written file."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_state(model: torch.nn.Module, path: Path | str) -> None:
    """Apply a state.safetensors (whole tensors and `@indices`/`@values` pairs) to a model in place."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for key, value in state.items():
            if key.endswith("@values"):
                continue
            if key.endswith("@indices"):
                name = key.removesuffix("@indices")
                params[name].view(-1)[value.to(params[name].device)] = state[f"{name}@values"].to(params[name])
            elif key in params:
                params[key].copy_(value)
            else:
                raise KeyError(f"{path}: tensor {key!r} is not in the model")
