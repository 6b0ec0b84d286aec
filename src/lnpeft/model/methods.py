"""Which entries of a model a fine-tuning method trains: one registry, one signature per method.

A method is a function `(model, arch, options) -> TrainableSet`, registered by name with
`@register_method`; CLI choices come from `METHODS`. Every method also trains the classification
head. Sub-tensor sets (random, fisher) name the trained entries of a tensor by flat indices, so a
BERT-large random set costs 49,152 indices, not a 300M-entry boolean mask.

`lnpeft params` counts a method on the meta device (no weights are read or allocated).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lnpeft.model.architectures import Architecture, for_config


@dataclass
class TrainableSet:
    """The trained entries: whole tensors by name, plus flat indices for partly trained tensors."""

    whole: tuple[str, ...]
    """Names of tensors trained entirely (head included)."""
    partial: dict[str, torch.Tensor] = field(default_factory=dict)
    """Name -> sorted unique int64 flat indices of the trained entries of that tensor."""

    @property
    def names(self) -> tuple[str, ...]:
        """Every tensor with at least one trained entry (needs requires_grad)."""
        return self.whole + tuple(n for n in self.partial if n not in self.whole)

    def count(self, model: nn.Module) -> int:
        params = dict(model.named_parameters())
        return sum(params[n].numel() for n in self.whole) + sum(int(i.numel()) for i in self.partial.values())

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Boolean masks (on each parameter's device) of the partly trained tensors."""
        params = dict(model.named_parameters())
        out = {}
        for name, idx in self.partial.items():
            p = params[name]
            mask = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
            mask[idx.to(p.device)] = True
            out[name] = mask.view_as(p)
        return out


@dataclass(frozen=True)
class MethodOptions:
    seed: int = 0
    """Seed of the random control's draw."""
    fraction: float | None = None
    """Fisher subsets: train the top ceil(fraction * N) LayerNorm entries."""
    mask: Path | None = None
    """Fisher subsets: the masks parquet (artifacts "masks") that ranks the LayerNorm entries."""


MethodFn = Callable[[nn.Module, Architecture, MethodOptions], TrainableSet]
METHODS: dict[str, MethodFn] = {}


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn

    return deco


def _head(model: nn.Module, arch: Architecture) -> list[str]:
    head = [n for n, _ in model.named_parameters() if arch.is_head(n)]
    if not head:
        raise ValueError(f"model has no classification head parameters (outside {arch.base}.); "
                         "load it with AutoModelForSequenceClassification")
    return head


def _layernorm(model: nn.Module, arch: Architecture) -> list[str]:
    names = [n for n, _ in model.named_parameters() if arch.is_layernorm(n)]
    if not names:
        raise ValueError(f"no LayerNorm parameters of the set {', '.join(arch.layernorm)} found in this "
                         f"{arch.base} model (model.layernorm chooses the set)")
    return names


@register_method("full")
def full(model: nn.Module, arch: Architecture, options: MethodOptions) -> TrainableSet:
    return TrainableSet(tuple(n for n, _ in model.named_parameters()))


@register_method("bitfit")
def bitfit(model: nn.Module, arch: Architecture, options: MethodOptions) -> TrainableSet:
    """Every bias (LayerNorm and pooler biases included) plus the head (Zaken et al., 2021)."""
    head = _head(model, arch)
    biases = [n for n, _ in model.named_parameters() if n.endswith(".bias") and n not in head]
    if not biases:  # ModernBERT by default: BitFit would silently train the head alone
        raise ValueError(f"method 'bitfit' selects nothing: this {model.config.model_type} model has no biases "
                         "outside its head; remove bitfit from methods (and from stats, submission)")
    return TrainableSet(tuple(biases + head))


@register_method("layernorm")
def layernorm(model: nn.Module, arch: Architecture, options: MethodOptions) -> TrainableSet:
    """Each layer's output LayerNorm weight and bias plus the head (the paper's method); the init
    folder's `model.layernorm` may choose another set (`lnpeft.model.architectures.for_config`)."""
    return TrainableSet(tuple(_layernorm(model, arch) + _head(model, arch)))


def _partial_set(selected: dict[str, np.ndarray], sizes: dict[str, int], head: list[str]) -> TrainableSet:
    """Tensors whose every entry is selected become whole tensors (no masking needed)."""
    whole, partial = [], {}
    for name, idx in selected.items():
        idx = np.unique(idx)
        if len(idx) == sizes[name]:
            whole.append(name)
        elif len(idx):
            partial[name] = torch.from_numpy(idx.astype(np.int64))
    return TrainableSet(tuple(whole + head), partial)


@register_method("random")
def random(model: nn.Module, arch: Architecture, options: MethodOptions) -> TrainableSet:
    """As many entries as `layernorm` trains outside the head, uniform over encoder.layer.* (seeded)."""
    params = dict(model.named_parameters())
    k = sum(params[n].numel() for n in _layernorm(model, arch))
    pool = [n for n in params if arch.is_encoder(n)]
    sizes = np.array([params[n].numel() for n in pool], dtype=np.int64)
    # Generator.choice without replacement draws k of N without materialising a permutation of N
    flat = np.random.default_rng(options.seed).choice(int(sizes.sum()), size=k, replace=False)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    which = np.searchsorted(offsets, flat, side="right") - 1
    selected = {pool[i]: flat[which == i] - offsets[i] for i in np.unique(which)}
    return _partial_set(selected, {n: int(params[n].numel()) for n in pool}, _head(model, arch))


def fisher_count(fraction: float, n: int) -> int:
    """ceil(f * N), robust to float noise (0.3 * 10 must give 3, not 4)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return math.ceil(round(fraction * n, 9))


@register_method("fisher")
def fisher(model: nn.Module, arch: Architecture, options: MethodOptions) -> TrainableSet:
    """The top ceil(f * N) output-LayerNorm entries by rank in a masks parquet, plus the head."""
    from lnpeft.data.artifacts import read_parquet

    if options.fraction is None or options.mask is None:
        raise ValueError("method 'fisher' needs --mask MASKS.parquet and --fraction F")
    ranks = read_parquet(options.mask, "masks")
    params = dict(model.named_parameters())
    ln = _layernorm(model, arch)
    n = sum(params[p].numel() for p in ln)
    if len(ranks) != n:
        raise ValueError(f"{options.mask}: {len(ranks)} ranked entries, but the model has {n} output "
                         "LayerNorm entries; was the mask computed for another model?")
    unknown = sorted(set(ranks["param"]) - set(ln))
    if unknown:
        raise ValueError(f"{options.mask}: params {unknown[:3]} are not output LayerNorm parameters "
                         f"of this {arch.base} model")
    if ranks["rank"].duplicated().any() or ranks[["param", "index"]].duplicated().any():
        raise ValueError(f"{options.mask}: duplicate ranks or duplicate (param, index) entries")
    top = ranks.nsmallest(fisher_count(options.fraction, n), "rank")
    for name, grp in top.groupby("param"):
        if grp["index"].min() < 0 or grp["index"].max() >= params[name].numel():
            raise ValueError(f"{options.mask}: index out of range for {name} ({params[name].numel()} entries)")
    selected = {name: grp["index"].to_numpy() for name, grp in top.groupby("param", sort=False)}
    selected = {name: selected[name] for name in ln if name in selected}  # model order
    return _partial_set(selected, {p: int(params[p].numel()) for p in ln}, _head(model, arch))


def select(model: nn.Module, method: str, options: MethodOptions = MethodOptions()) -> TrainableSet:
    """The trainable set of `method` for a *ForSequenceClassification model."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    return METHODS[method](model, for_config(model.config), options)


def meta_model(config_path: Path | str, num_labels: int) -> nn.Module:
    """A sequence-classification model built from a config.json on the meta device (no memory)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(config_path, num_labels=num_labels)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def count(model: nn.Module, method: str, options: MethodOptions = MethodOptions()) -> dict[str, float]:
    total = sum(p.numel() for p in model.parameters())
    trainable = select(model, method, options).count(model)
    return {"total": total, "trainable": trainable, "percent": 100.0 * trainable / total}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-config", required=True, type=Path,
                        help="config.json of the model (or a folder holding one)")
    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    parser.add_argument("--num-labels", required=True, type=int)
    parser.add_argument("--fraction", type=float, help="fisher: fraction of LayerNorm entries")
    parser.add_argument("--mask", type=Path, help="fisher: masks parquet")
    parser.add_argument("--seed", type=int, default=0, help="random: seed of the draw")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    model = meta_model(args.model_config, args.num_labels)
    result = count(model, args.method, MethodOptions(args.seed, args.fraction, args.mask))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.method}: {result['trainable']:,} of {result['total']:,} "
              f"({result['percent']:.4f}%)")
    return 0
