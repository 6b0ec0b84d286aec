"""A save_pretrained folder's weights read one tensor at a time, under the model's parameter names.

From its safetensors files (one `model.safetensors`, or the shards a `model.safetensors.index.json`
maps), each tensor as `from_pretrained(dtype=float32)` would hold it: checkpoint names become the
model's as transformers renames them on load (the base model's prefix added or dropped, legacy
`LayerNorm.gamma`/`beta`), so a stage can walk a 7B model holding one tensor, not the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def weight_files(folder: Path) -> dict[str, Path] | None:
    """The checkpoint's tensor names -> their safetensors file; None for PyTorch .bin weights."""
    from safetensors import safe_open

    index, single = folder / "model.safetensors.index.json", folder / "model.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{index}: not a safetensors index with a weight_map ({err})") from None
        files = {key: folder / name for key, name in weight_map.items()}
        missing = sorted({str(p) for p in files.values() if not p.exists()})
        if missing:
            raise FileNotFoundError(f"{index}: names shards that are not there: {', '.join(missing)}")
        return files
    if single.exists():
        with safe_open(single, framework="pt") as f:
            return dict.fromkeys(f.keys(), single)
    if (folder / "pytorch_model.bin").exists() or (folder / "pytorch_model.bin.index.json").exists():
        return None
    raise FileNotFoundError(f"{folder}: no weights (model.safetensors, model.safetensors.index.json or "
                            "pytorch_model.bin)")


def model_names(files: dict[str, Path], model: torch.nn.Module) -> dict[str, tuple[str, bool]]:
    """checkpoint name -> (the model's name for it, whether a converter (not a renaming) makes
    it), as `from_pretrained` renames checkpoint keys (transformers.core_model_loading)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    meta = model.state_dict()
    prefix = model.base_model_prefix
    out = {}
    for key in files:
        name, converter = rename_source_key(key, renamings, converters, prefix, meta)
        if name not in meta and key in meta:  # as from_pretrained: the key as it is, but for the prefix
            name, converter = rename_source_key(key, [], [], prefix, meta)
        out[key] = (name, converter is not None)
    return out


class StoredWeights:
    """A save_pretrained folder's safetensors weights under the model's parameter names, read one
    tensor at a time."""

    def __init__(self, folder: Path, files: dict[str, Path], model: torch.nn.Module):
        """`files`: `weight_files(folder)`; `model`: the folder's model (on the meta device)."""
        self.folder = folder
        self.expected = {n: tuple(p.shape) for n, p in model.named_parameters()}
        self.stored: dict[str, tuple[Path, str]] = {}
        """model name -> (file, the checkpoint's name for it)"""
        for key, (name, converted) in model_names(files, model).items():
            if name not in self.expected:
                continue  # a buffer, another head's tensor: from_pretrained drops it too
            if converted:
                raise ValueError(f"{folder}: {key} loads as {name} through a transformers converter, which "
                                 "a tensor-by-tensor read does not apply")
            if name in self.stored:
                raise ValueError(f"{folder}: tensors {self.stored[name][1]} and {key} both load as {name}")
            self.stored[name] = (files[key], key)

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor as `from_pretrained(dtype=float32)` holds it, after checking its shape."""
        from safetensors import safe_open

        if name not in self.stored:
            raise ValueError(f"{self.folder}: no tensor for {name} in its safetensors files")
        path, key = self.stored[name]
        with safe_open(path, framework="pt") as f:
            shape = tuple(f.get_slice(key).get_shape())
            if shape != self.expected[name]:
                raise ValueError(f"{path}: tensor {key} has shape {shape}; the folder's config.json makes "
                                 f"{name} {self.expected[name]}")
            return f.get_tensor(key).to(torch.float32)
