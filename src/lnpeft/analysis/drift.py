"""`lnpeft drift`: how much each component moved in a full fine-tune (paper Eq. 1).

D = 1/n sum_i |C_fine_i - C_pre_i| over the n entries of a component of one layer. Rows per
(layer, component) for kind `weight`, kind `bias` and kind `all` (weight and bias entries pooled,
so D of `all` is the n-weighted mean of the two; Figure 1 shows `all`). Differences are taken in
float64.

The two folders are read one tensor pair at a time from their safetensors files (one file, or the
shards of model.safetensors.index.json), and only the tensors of a component (the architecture
row's `pieces`): a 7B decoder needs one pair of its largest matrix in memory, not two whole models.
Checkpoint names become the model's names as `from_pretrained` renames them (transformers' own
renaming: the base model's prefix, legacy `LayerNorm.gamma`), and each tensor is read as
`from_pretrained(dtype=float32)` would hold it, so the table is the one the whole load gives, bit
for bit. A folder of PyTorch .bin weights is loaded whole.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
import torch

from lnpeft.data.artifacts import write_parquet
from lnpeft.model.architectures import COMPONENTS, Architecture, for_config, get_architecture
from lnpeft.model.weight_files import StoredWeights, weight_files

KINDS = ("weight", "bias", "all")


def load_parameters(folder: Path | str) -> tuple[Architecture, dict[str, torch.Tensor]]:
    """(the bound architecture row, name -> tensor) of a save_pretrained sequence-classification
    folder, loaded whole in float32 (the .bin fallback of `folder_drift`)."""
    from transformers import AutoModelForSequenceClassification

    folder = _checked(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    return for_config(model.config), {n: p.detach() for n, p in model.named_parameters()}


def _checked(folder: Path | str) -> Path:
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: not a save_pretrained folder (no config.json)")
    return folder


def _change(name: str, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    if after.shape != before.shape:
        raise ValueError(f"{name}: shape {tuple(after.shape)} after vs {tuple(before.shape)} before")
    return (after.double() - before.double()).abs()


def _drift(arch: Architecture, names: Iterable[str],
           pair: Callable[[str], tuple[torch.Tensor, torch.Tensor]]) -> pd.DataFrame:
    """The drift table over the component tensors among `names`, in their order (the float sums
    depend on it); `pair(name)` gives (before, after), asked only for a component's tensor and
    dropped once its difference is taken."""
    sums: dict[tuple[int, str, str], tuple[float, int]] = {}
    for name in names:
        pieces = arch.pieces(name)
        if not pieces:
            continue
        change = _change(name, *pair(name))
        for piece in pieces:
            block = piece.take(change)
            for key in (piece[:3], (piece.layer, piece.component, "all")):
                s, n = sums.get(key, (0.0, 0))
                sums[key] = (s + float(block.sum()), n + block.numel())
        del change, block  # before the next pair is read
    if not sums:
        raise ValueError(f"no encoder components found in the {arch.base} model")
    rows = [{"layer": layer, "component": comp, "kind": kind, "n": n, "D": s / n}
            for (layer, comp, kind), (s, n) in sums.items()]
    df = pd.DataFrame(rows)
    df["c"] = df["component"].map(COMPONENTS.index)
    df["k"] = df["kind"].map(KINDS.index)
    return df.sort_values(["layer", "c", "k"]).drop(columns=["c", "k"]).reset_index(drop=True)


def compute_drift(arch: Architecture | str, pre: dict[str, torch.Tensor],
                  post: dict[str, torch.Tensor]) -> pd.DataFrame:
    """The drift table (artifact `drift`) of two parameter dicts of the same architecture (a row,
    or a model_type for families without a component outside the layers)."""
    arch = get_architecture(arch) if isinstance(arch, str) else arch

    def pair(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in post:
            raise ValueError(f"parameter {name} is missing from the fine-tuned model")
        return pre[name], post[name]

    return _drift(arch, pre, pair)


def _meta_model(folder: Path) -> tuple[torch.nn.Module, Architecture]:
    """The folder's sequence-classification model on the meta device, and its bound row."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return model, for_config(config)


def folder_drift(pre: Path | str, post: Path | str) -> pd.DataFrame:
    """The drift table of two save_pretrained folders of one family and depth, read tensor by
    tensor (a folder of .bin weights: loaded whole)."""
    pre, post = _checked(pre), _checked(post)
    model, arch = _meta_model(pre)
    post_model, post_arch = _meta_model(post)
    if arch.base != post_arch.base or arch.n_layers != post_arch.n_layers:
        raise ValueError(f"{pre} and {post} are models of other families or depths "
                         f"({arch.base} x {arch.n_layers} vs {post_arch.base} x {post_arch.n_layers})")
    read_pre, read_post = (_reader(folder, meta) for folder, meta in ((pre, model), (post, post_model)))
    names = [n for n, _ in model.named_parameters()]  # from_pretrained's order: the sums' order
    return _drift(arch, names, lambda name: (read_pre(name), read_post(name)))


def _reader(folder: Path, model: torch.nn.Module) -> Callable[[str], torch.Tensor]:
    """name -> tensor of a folder: from its safetensors files one at a time, or from a whole load."""
    files = weight_files(folder)
    if files is not None:
        return StoredWeights(folder, files, model).tensor
    whole = load_parameters(folder)[1]

    def tensor(name: str) -> torch.Tensor:
        if name not in whole:
            raise ValueError(f"{folder}: no tensor for {name}")
        return whole[name]

    return tensor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pre", required=True, help="model before fine-tuning (the init folder)")
    parser.add_argument("--post", required=True, help="model after full fine-tuning")
    parser.add_argument("--out", required=True, help="drift parquet")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: $OMP_NUM_THREADS, else torch's)")


def run(args: argparse.Namespace) -> int:
    from lnpeft.numerics import pin_threads

    pin_threads(args.threads)  # the float64 sums split by thread count
    df = folder_drift(args.pre, args.post)
    meta = {"lnpeft": json.dumps({"pre": str(args.pre), "post": str(args.post)}, sort_keys=True)}
    write_parquet(df, args.out, "drift", metadata=meta)
    top = df[df["kind"] == "all"].groupby("component")["D"].mean().sort_values(ascending=False)
    print(f"drift: {len(df)} rows -> {args.out}; mean D by component: "
          + ", ".join(f"{c}={v:.3g}" for c, v in top.items()))
    return 0
