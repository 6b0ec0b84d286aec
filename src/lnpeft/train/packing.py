"""What each run of a pack trains, held apart from the frozen model: `RunParameters`.

A pack trains G parameter-efficient runs of one (task, seed) in one forward and backward pass over
G x B rows: the run's batch of B examples repeated G times, member g owning rows g*B..(g+1)*B. The
frozen weights are held once and applied to all G*B rows in one product. What a member trains lives
in tensors of its own, applied to its rows only by the linear layers and norms it touches
(`lnpeft.model.linears`, `lnpeft.model.norms`):

  norm           xhat * gamma_g + beta_g     (gamma_g: the member's whole tensor, or the frozen one
                                              with the member's trained entries scattered in;
                                              Gemma's norms scale by 1 + gamma_g)
  linear bias    x @ W^T + b_g
  linear weight  whole (the head): a batched product with W_g; some entries (the random control):
                 x @ W^T plus x's columns at those entries times (v_g - W[entries]), k per member

Members never mix: attention, norm statistics and the loss stay within an example, so each
member's gradients are those of its own run and a member whose loss turns non-finite cannot touch
the others' numbers.

A pack of one needs none of this: `in_place` trains the model's own tensors as a single run always
has (whole tensors by requires_grad, partly trained ones through `PartialTensors`), so one run's
numbers do not change with packing.

Dropout. A separate run draws one mask per dropout call for its B rows. Under `shared_dropout` the
pack draws exactly that mask (same shape, same order of calls, same generator) and applies it to
every member's rows, so on CPU each member sees its separate run's masks and equals that run up to
float rounding. Attention dropout inside SDPA is redone by the math torch's CPU SDPA uses when it
drops out. Without it (the CUDA default: SDPA's fused kernels stay), one mask is drawn for all G*B
rows: the same distribution, other masks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lnpeft.model.linears import linear_of
from lnpeft.model.methods import TrainableSet
from lnpeft.model.norms import norm_of
from lnpeft.model.partial_tensors import PartialTensors


@dataclass
class RunParameters:
    """One run's trained tensors, in the order its optimizer takes them (whole tensors, then the
    entries of partly trained tensors), and what to do after each optimizer step."""

    whole: dict[str, nn.Parameter]
    """Tensor name -> the run's value of a tensor it trains entirely."""
    indices: dict[str, torch.Tensor]
    """Tensor name -> flat indices (sorted; on the tensor's device in a pack) of the entries it trains
    of a partly trained tensor."""
    values: dict[str, nn.Parameter]
    """Tensor name -> the run's values of those entries."""
    sync: Callable[[], None] = field(default=lambda: None)
    """After each optimizer step and after loading values (in place: write entries into their tensor)."""

    def parameters(self) -> list[nn.Parameter]:
        return list(self.whole.values()) + list(self.values.values())


def prepare_trainable(model: nn.Module, trainable: TrainableSet) -> PartialTensors:
    """requires_grad on the whole trained tensors only (no weight gradients for anything else);
    partly trained tensors stay frozen and train their entries through `PartialTensors`."""
    whole = set(trainable.whole)
    for name, p in model.named_parameters():
        p.requires_grad_(name in whole)
    return PartialTensors(model, trainable)


def in_place(model: nn.Module, trainable: TrainableSet) -> RunParameters:
    """A pack of one: train the model's own tensors (`prepare_trainable`)."""
    partial = prepare_trainable(model, trainable)
    params = dict(model.named_parameters())
    return RunParameters({n: params[n] for n in trainable.whole},
                         {n: i.clone() for n, i in trainable.partial.items()}, partial.values, partial.sync_)


_ROWS: list[int | None] = [None]
"""Rows of the packed batch being run (`batch_rows`); None outside the training loop's passes."""


@contextlib.contextmanager
def batch_rows(rows: int) -> Iterator[None]:
    """Within the block, a packed module whose input does not have the packed batch's `rows` rows
    fails (`_check_rows`) instead of giving runs the wrong rows."""
    previous, _ROWS[0] = _ROWS[0], rows
    try:
        yield
    finally:
        _ROWS[0] = previous


def _check_rows(prefix: str, x: torch.Tensor) -> None:
    rows = _ROWS[0]
    if rows is not None and x.shape[0] != rows:
        raise TypeError(
            f"{prefix} is applied to a tensor of {x.shape[0]} rows, not to the {rows} rows of the packed "
            "batch (a tensor the batch shares, such as DeBERTa's relative position embeddings): packed "
            "runs cannot each have their own " + prefix + "; set training.pack_size: 1 for this model")


def _stacker(runs: list[RunParameters], name: str, base: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A function giving tensor `name` as every member sees it, stacked [G, *shape], in a fixed
    number of operations whatever G is: the frozen tensor broadcast, the members that train it
    whole copied in with one index_copy, the trained entries of the others with one scatter (their
    flat indices, offset by member, built here once, on the tensor's device: no host transfer and
    no per-member loop at each forward)."""
    g_n, n = len(runs), base.numel()
    whole = [g for g, r in enumerate(runs) if name in r.whole]
    part = [g for g, r in enumerate(runs) if name not in r.whole and name in r.values]
    whole_rows = torch.tensor(whole, dtype=torch.long, device=base.device)
    flat = torch.cat([g * n + runs[g].indices[name] for g in part]) if part else None

    def stacked() -> torch.Tensor:
        out = base.detach().reshape(1, n).expand(g_n, n)
        if whole:
            out = out.index_copy(0, whole_rows, torch.stack([runs[g].whole[name].reshape(n) for g in whole]).to(out.dtype))
        if part:
            values = torch.cat([runs[g].values[name] for g in part]).to(out.dtype)
            out = out.reshape(-1).scatter(0, flat, values).view(g_n, n)
        return out.reshape(g_n, *base.shape)

    return stacked


def _packed_linear(module: nn.Module, prefix: str, runs: list[RunParameters]):
    kind = linear_of(module)
    out_n, in_n = kind.sizes(module)
    w_name, b_name = f"{prefix}.weight", f"{prefix}.bias"
    whole_weight = any(w_name in r.whole for r in runs)
    weights = _stacker(runs, w_name, module.weight) if whole_weight else None
    bias = (_stacker(runs, b_name, module.bias) if module.bias is not None
            and any(b_name in r.whole or b_name in r.values for r in runs) else None)
    sparse = [g for g, r in enumerate(runs) if w_name in r.values and not whole_weight]
    if sparse:  # the random control's entries of every member, as one gather and one index_add
        idx = torch.cat([runs[g].indices[w_name] for g in sparse])
        member = torch.cat([torch.full_like(runs[g].indices[w_name], g) for g in sparse])
        rows, cols = kind.out_in(module, idx)
        target = member * out_n + rows  # row of y viewed as [G * out, rows of a member]
        source = member * in_n + cols  # row of x viewed as [G * in, rows of a member]

    def forward(x: torch.Tensor) -> torch.Tensor:
        _check_rows(prefix, x)
        xs = x.reshape(len(runs), -1, x.shape[-1])  # (G, rows of one member, in)
        if weights is not None:  # the head: every member its own matrix, one batched product
            stacked = weights().to(xs.dtype)  # [G, *stored shape]
            y = torch.bmm(xs, stacked if kind.transposed else stacked.transpose(1, 2))
        else:
            y = F.linear(xs, kind.weight_out_in(module.weight))  # the frozen matrix once, over all G*B rows
            if sparse:
                values = torch.cat([runs[g].values[w_name] for g in sparse])
                delta = values - module.weight.detach().reshape(-1)[idx]
                g_n, r_n, o_n = y.shape
                # index_select, not xs[member, cols]: advanced indexing's backward is index_put_ with
                # accumulate, which on CPU adds with atomics across threads (bits vary run to run)
                x_rows = xs.transpose(1, 2).reshape(g_n * in_n, r_n).index_select(0, source)
                contrib = x_rows * delta.to(xs.dtype).unsqueeze(1)  # (K, rows)
                y = (y.transpose(1, 2).reshape(g_n * o_n, r_n).index_add(0, target, contrib.to(y.dtype))
                     .reshape(g_n, o_n, r_n).transpose(1, 2))
        if module.bias is not None:
            b = bias() if bias is not None else module.bias.detach().expand(len(runs), -1)
            y = y + b.unsqueeze(1).to(y.dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    return forward


def _packed_norm(module: nn.Module, prefix: str, runs: list[RunParameters]):
    norm = norm_of(module)
    gamma = _stacker(runs, f"{prefix}.weight", module.weight)
    beta = _stacker(runs, f"{prefix}.bias", module.bias) if getattr(module, "bias", None) is not None else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        _check_rows(prefix, x)
        xs = norm.normalise(module, x).reshape(len(runs), -1, x.shape[-1])
        y = norm.affine(xs, gamma().unsqueeze(1), beta().unsqueeze(1) if beta is not None else None)
        return y.reshape(x.shape)  # fp32, as nn.LayerNorm gives under autocast

    return forward


def pack(model: nn.Module, trainables: list[TrainableSet]) -> list[RunParameters]:
    """Freeze `model` and give every trainable set its own tensors, applied to its rows of a packed
    batch (module doc). Raises TypeError naming a trained tensor that is not a linear layer's or norm's
    weight or bias (packing knows only those; train such a method with pack_size 1)."""
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    for p in model.parameters():
        p.requires_grad_(False)
    runs = []
    for t in trainables:
        whole = {n: nn.Parameter(params[n].detach().clone()) for n in t.whole}
        # indices on the tensor's device once, here: a forward never copies them from the host
        indices = {n: i.to(params[n].device) for n, i in t.partial.items()}
        # fp32 even where the frozen tensor is bf16 (lnpeft.model.weight_dtype)
        values = {n: nn.Parameter(params[n].detach().reshape(-1)[indices[n]].float()) for n in t.partial}
        runs.append(RunParameters(whole, indices, values))
    touched = sorted({n.rsplit(".", 1)[0] for t in trainables for n in t.names})
    for prefix in touched:
        module = modules.get(prefix)
        kinds = {n.rsplit(".", 1)[1] for t in trainables for n in t.names if n.rsplit(".", 1)[0] == prefix}
        linear, norm = (linear_of(module), norm_of(module)) if module is not None else (None, None)
        if kinds - {"weight", "bias"} or (linear is None and norm is None):
            raise TypeError(f"{prefix}: packed training trains the weights and biases of linear layers and "
                            f"norms, not {type(module).__name__} {sorted(kinds)}; use training.pack_size 1")
        if norm is not None and getattr(module, "weight", None) is None:
            raise TypeError(f"{prefix}: a norm without affine parameters cannot be trained")
        build = _packed_linear if linear is not None else _packed_norm
        module.forward = build(module, prefix, runs)  # an instance attribute: hooks still run
    return runs


def replicate(batch: dict[str, torch.Tensor], copies: int) -> dict[str, torch.Tensor]:
    """The packed batch: every tensor but the labels repeated `copies` times along the batch."""
    if copies == 1:
        return batch
    return {k: v if k == "labels" else v.repeat(copies, *([1] * (v.dim() - 1))) for k, v in batch.items()}


@contextlib.contextmanager
def shared_dropout(copies: int) -> Iterator[None]:
    """Within the block, every dropout (nn.Dropout, F.dropout and SDPA's dropout_p) draws the mask
    of one member's rows, as its separate run would, and applies it to all `copies` members."""
    if copies == 1:
        yield
        return
    dropout, sdpa = F.dropout, F.scaled_dot_product_attention

    def shared(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        if not training or p == 0.0:
            return input
        if p == 1.0:
            return input * 0.0
        rows = input.shape[0] // copies
        # what at::dropout does on CPU for one run's rows: a bernoulli(1 - p) mask scaled by 1 / (1 - p)
        noise = torch.empty_like(input[:rows]).bernoulli_(1 - p).div_(1 - p)
        return (input.reshape(copies, rows, *input.shape[1:]) * noise).reshape(input.shape)

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False):
        if dropout_p == 0.0:
            return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=is_causal,
                        scale=scale, enable_gqa=enable_gqa)
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            repeat = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        scores = query @ key.transpose(-2, -1) * scale
        if is_causal:
            n, m = scores.shape[-2:]
            scores = scores.masked_fill(~torch.ones(n, m, dtype=torch.bool, device=scores.device).tril(), -torch.inf)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, -torch.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
        return shared(torch.softmax(scores, -1), dropout_p) @ value

    F.dropout, F.scaled_dot_product_attention = shared, attention
    try:
        yield
    finally:
        F.dropout, F.scaled_dot_product_attention = dropout, sdpa
