"""`lnpeft drift`: how much each component moved in a full fine-tune (paper Eq. 1).

D = 1/n sum_i |C_fine_i - C_pre_i| over the n entries of a component of one layer. Rows per
(layer, component) for kind `weight`, kind `bias` and kind `all` (weight and bias entries pooled,
so D of `all` is the n-weighted mean of the two; Figure 1 shows `all`). Differences are taken in
float64.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from lnpeft.data.artifacts import write_parquet
from lnpeft.model.architectures import COMPONENTS, Architecture, for_config, get_architecture

KINDS = ("weight", "bias", "all")


def load_parameters(folder: Path | str) -> tuple[Architecture, dict[str, torch.Tensor]]:
    """(the bound architecture row, name -> tensor) of a save_pretrained sequence-classification folder."""
    from transformers import AutoModelForSequenceClassification

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: not a save_pretrained folder (no config.json)")
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    return for_config(model.config), {n: p.detach() for n, p in model.named_parameters()}


def compute_drift(arch: Architecture | str, pre: dict[str, torch.Tensor],
                  post: dict[str, torch.Tensor]) -> pd.DataFrame:
    """The drift table (artifact `drift`) of two parameter dicts of the same architecture (a row,
    or a model_type for families without a component outside the layers)."""
    arch = get_architecture(arch) if isinstance(arch, str) else arch
    sums: dict[tuple[int, str, str], tuple[float, int]] = {}
    for name, before in pre.items():
        pieces = arch.pieces(name)
        if not pieces:
            continue
        if name not in post:
            raise ValueError(f"parameter {name} is missing from the fine-tuned model")
        after = post[name]
        if after.shape != before.shape:
            raise ValueError(f"{name}: shape {tuple(after.shape)} after vs {tuple(before.shape)} before")
        change = (after.double() - before.double()).abs()
        for piece in pieces:
            block = piece.take(change)
            for key in (piece[:3], (piece.layer, piece.component, "all")):
                s, n = sums.get(key, (0.0, 0))
                sums[key] = (s + float(block.sum()), n + block.numel())
    if not sums:
        raise ValueError(f"no encoder components found in the {arch.base} model")
    rows = [{"layer": layer, "component": comp, "kind": kind, "n": n, "D": s / n}
            for (layer, comp, kind), (s, n) in sums.items()]
    df = pd.DataFrame(rows)
    df["c"] = df["component"].map(COMPONENTS.index)
    df["k"] = df["kind"].map(KINDS.index)
    return df.sort_values(["layer", "c", "k"]).drop(columns=["c", "k"]).reset_index(drop=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pre", required=True, help="model before fine-tuning (the init folder)")
    parser.add_argument("--post", required=True, help="model after full fine-tuning")
    parser.add_argument("--out", required=True, help="drift parquet")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: $OMP_NUM_THREADS, else torch's)")


def run(args: argparse.Namespace) -> int:
    from lnpeft.numerics import pin_threads

    pin_threads(args.threads)  # the float64 sums split by thread count
    pre_arch, pre = load_parameters(args.pre)
    post_arch, post = load_parameters(args.post)
    if pre_arch.base != post_arch.base or pre_arch.n_layers != post_arch.n_layers:
        raise ValueError(f"{args.pre} and {args.post} are models of other families or depths "
                         f"({pre_arch.base} x {pre_arch.n_layers} vs {post_arch.base} x {post_arch.n_layers})")
    df = compute_drift(pre_arch, pre, post)
    meta = {"lnpeft": json.dumps({"pre": str(args.pre), "post": str(args.post)}, sort_keys=True)}
    write_parquet(df, args.out, "drift", metadata=meta)
    top = df[df["kind"] == "all"].groupby("component")["D"].mean().sort_values(ascending=False)
    print(f"drift: {len(df)} rows -> {args.out}; mean D by component: "
          + ", ".join(f"{c}={v:.3g}" for c, v in top.items()))
    return 0
