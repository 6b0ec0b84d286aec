"""`lnpeft fisher`: the empirical Fisher information of paper Eq. 2 at the init checkpoint.

F(w_i) = 1/N sum_j (d log p(y_j | x_j) / d w_i)^2 over N training examples, with the TRUE labels
(empirical Fisher), the model in eval mode (no dropout). log p is:
- classification: log-softmax of the logits at the true label (minus cross-entropy);
- regression (STS-B, num_labels == 1): a unit-variance Gaussian, log p = -0.5 (y - f(x))^2 + const,
  so the per-sample gradient is (y - f) df/dw (not the 2(y - f) df/dw of a plain squared error).

Per-sample gradients come from one batched forward/backward per batch through layer hooks
(`lnpeft.analysis.grad_sample`), never from a batch-size-1 loop, and only what the tables need is
kept between batches (`compute_fisher_streamed`): the LayerNorm set's entries and one sum per
component piece of every other tensor. Outputs: every output-LayerNorm entry (artifact `fisher`)
and the mean Fisher per (layer, component, kind) of all eight components (artifact
`fisher_components`).

With `--dtype bfloat16` (config `model.dtype`) the model is held as a bf16 run holds it
(`lnpeft.model.weight_dtype`: bf16 weights, fp32 norms) and its forward runs under bf16 autocast;
the kernels square and sum in fp32 and float64 either way.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lnpeft.analysis.grad_sample import SquaredGradSampler
from lnpeft.data.artifacts import read_parquet, write_parquet
from lnpeft.data.batching import collate, encode, length_grouped_batches, model_inputs
from lnpeft.errors import OutOfMemoryError, is_oom
from lnpeft.model.architectures import COMPONENTS, for_config
from lnpeft.model.weight_dtype import WEIGHT_DTYPES, hold, weight_dtype


@dataclass(frozen=True)
class FisherConfig:
    batch_size: int = 32
    """Examples per batched forward/backward (memory only: the result does not depend on it)."""
    max_samples: int | None = None
    """Use a seeded random subset of at most this many training examples (None: all)."""
    max_length: int = 128
    """Tokens per example after truncation (as in fine-tuning)."""
    seed: int = 0
    """Seed of the subset drawn when max_samples is smaller than the split."""
    device: str = "auto"
    """auto (cuda if available) | cpu | cuda."""
    threads: int | None = None
    """torch CPU threads (Snakemake's `threads:`); None: OMP_NUM_THREADS, else torch's default.
    Always pinned (`lnpeft.numerics`): CPU numbers are bit-identical for the same count."""
    dtype: str = "float32"
    """float32 | bfloat16: the dtype the weights are held in (norms stay fp32), as the runs hold them."""

    def __post_init__(self) -> None:
        weight_dtype(self.dtype)  # an unknown dtype fails here
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"--max-samples must be >= 1, got {self.max_samples}")
        if self.max_length < 2:
            raise ValueError(f"--max-length must be >= 2, got {self.max_length}")


def per_sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log p(y_j | x_j) per sample [B] (up to constants): cross-entropy, or 0.5 squared error if 1 output."""
    if logits.shape[-1] == 1:
        return 0.5 * (logits.squeeze(-1) - labels.to(logits.dtype)).pow(2)
    return torch.nn.functional.cross_entropy(logits, labels.long(), reduction="none")


def per_sample_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-sum_j log p(y_j | x_j) (up to constants)."""
    return per_sample_losses(logits, labels).sum()


def component_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """prefix -> module of every per-layer component (the eight of Table 1) of the encoder."""
    arch = for_config(model.config)
    found = {}
    for name, module in model.named_modules():
        if name and arch.pieces(f"{name}.weight"):
            found[name] = module
    if not found:
        raise ValueError(f"no encoder components found in a {model.config.model_type} model")
    return found


def select_rows(df: pd.DataFrame, max_samples: int | None, seed: int, path: Path | str) -> pd.DataFrame:
    if df["label"].isna().any():
        bad = int(df["label"].isna().sum())
        raise ValueError(f"{path}: {bad} rows have no label; the Fisher needs a labelled split (train)")
    if max_samples is not None and len(df) > max_samples:
        df = df.sample(n=max_samples, random_state=seed).sort_index()
    return df.reset_index(drop=True)


def compute_fisher(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                   device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], int]:
    """Mean squared per-sample gradient of every component parameter (name -> float64 tensor)."""
    sums, n = _squared_sums(model, batches, device)
    return {name: total / n for name, total in sums.items()}, n


def compute_fisher_streamed(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                            device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor],
                                                                         dict[str, torch.Tensor], int]:
    """`compute_fisher` holding only what the tables need between batches: every entry of the
    LayerNorm set, and one sum per component piece of every other tensor (a 7B decoder's
    projections would otherwise keep float64 sums of the model's size). Returns (LayerNorm set
    name -> mean per entry, other name -> mean per piece in `arch.pieces` order, examples)."""
    arch = for_config(model.config)
    reduce = {}
    for name, _ in model.named_parameters():
        pieces = arch.pieces(name)
        if pieces and not any(p.component in arch.layernorm for p in pieces):
            reduce[name] = lambda value, pieces=pieces: torch.stack([p.take(value).sum() for p in pieces])
    sums, n = _squared_sums(model, batches, device, reduce)
    entries = {name: total / n for name, total in sums.items() if name not in reduce}
    sizes = {name: torch.tensor([p.take(param).numel() for p in arch.pieces(name)], dtype=torch.float64)
             for name, param in model.named_parameters() if name in reduce}
    piece_means = {name: total / (n * sizes[name].to(total.device)) for name, total in sums.items() if name in reduce}
    return entries, piece_means, n


def _squared_sums(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device | str,
                  reduce: dict | None = None) -> tuple[dict[str, torch.Tensor], int]:
    model.eval()
    modules = component_modules(model)
    # bf16 weights meet fp32 norms and activations only inside autocast (lnpeft.model.weight_dtype)
    bf16 = any(p.dtype == torch.bfloat16 for p in model.parameters())
    n = 0
    with SquaredGradSampler(modules, reduce) as sampler:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            try:
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(**model_inputs(model, batch)).logits
                sampler.backward(per_sample_losses(logits.float(), labels), batch["attention_mask"])
            except RuntimeError as err:
                if not is_oom(err):
                    raise
                raise OutOfMemoryError(
                    f"fisher: out of memory on a batch of {len(labels)} examples x "
                    f"{batch['input_ids'].shape[1]} tokens on {device} (after {n} examples); lower "
                    "fisher.batch_size (--batch-size) or training.max_length (--max-length)") from err
            n += len(labels)
    if n == 0:
        raise ValueError("no examples: the Fisher of an empty split is undefined")
    return sampler.sums, n


def fisher_tables(model: torch.nn.Module, fisher: dict[str, torch.Tensor],
                  piece_means: dict[str, torch.Tensor] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per LayerNorm entry table, per (layer, component, kind) mean table), model order.

    The entries are those of the model's LayerNorm set (`for_config`: the paper's output LayerNorm
    unless the init folder chose another); a fused tensor's row blocks are averaged per component.
    `piece_means` (`compute_fisher_streamed`) gives other tensors' means per piece instead of
    their entries in `fisher`."""
    arch = for_config(model.config)
    piece_means = piece_means or {}
    entries, comps = [], []
    for name, param in model.named_parameters():
        if name not in fisher and name not in piece_means:
            continue
        for i, piece in enumerate(arch.pieces(name)):
            if name in piece_means:
                size, mean = piece.take(param).numel(), float(piece_means[name][i])
            else:
                values = piece.take(fisher[name]).detach().cpu().numpy().astype(np.float64)
                size, mean = int(values.size), float(values.mean())
            comps.append({"layer": piece.layer, "component": piece.component, "kind": piece.kind,
                          "n": size, "fisher": mean})
            if piece.component in arch.layernorm:  # never fused: the entry index is the tensor's
                entries.append(pd.DataFrame({
                    "param": name, "layer": piece.layer, "component": piece.component, "kind": piece.kind,
                    "index": np.arange(values.size, dtype=np.int64), "fisher": values.ravel(),
                }))
    comp_df = pd.DataFrame(comps)
    comp_df["order"] = comp_df["component"].map(COMPONENTS.index)
    comp_df = comp_df.sort_values(["layer", "order", "kind"], kind="stable").drop(columns="order")
    return pd.concat(entries, ignore_index=True), comp_df.reset_index(drop=True)


def _optional_int(text: str) -> int | None:
    # the workflow passes config values verbatim, so YAML's null arrives as 'None'
    return None if text.lower() in ("none", "null", "all") else int(text)


def load_for_fisher(model_dir: Path | str, dtype: str = "float32"):
    """The model with a padded attention implementation pinned: the per-sample kernels need
    activations of shape [batch, tokens, hidden]; an unpadded (varlen) backend such as flash
    attention packs tokens of the whole batch into one row and no sample's gradient can be told
    apart. SDPA where the family has it, else the eager one. Its weights in `dtype`, every norm in
    fp32 (`lnpeft.model.weight_dtype.hold`, as a run of that dtype holds them)."""
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=weight_dtype(dtype),
                                                                   attn_implementation="sdpa")
    except ValueError:  # a family without SDPA support (transformers says so as a ValueError)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=weight_dtype(dtype),
                                                                   attn_implementation="eager")
    hold(model, (), dtype)
    return model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="init checkpoint folder (save_pretrained)")
    parser.add_argument("--data", required=True, help="training split parquet (results/data/{task}/train.parquet)")
    parser.add_argument("--out", required=True, help="per-LayerNorm-entry Fisher parquet")
    parser.add_argument("--components-out", help="mean Fisher per (layer, component, kind) parquet")
    parser.add_argument("--max-samples", type=_optional_int, default=FisherConfig.max_samples,
                        help="cap on training examples; 'None', 'null' or 'all' uses every row")
    parser.add_argument("--batch-size", type=int, default=FisherConfig.batch_size)
    parser.add_argument("--max-length", type=int, default=FisherConfig.max_length)
    parser.add_argument("--seed", type=int, default=FisherConfig.seed)
    parser.add_argument("--device", default=FisherConfig.device, choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=FisherConfig.threads,
                        help="torch CPU threads (default: $OMP_NUM_THREADS, else torch's default)")
    parser.add_argument("--dtype", choices=tuple(WEIGHT_DTYPES), default=FisherConfig.dtype,
                        help="hold the weights in this dtype (bfloat16: norms stay fp32, the forward runs "
                             "under bf16 autocast), as the runs of config model.dtype hold them")


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from lnpeft.numerics import pin_threads

    cfg = FisherConfig(batch_size=args.batch_size, max_samples=args.max_samples, max_length=args.max_length,
                       seed=args.seed, device=args.device, threads=pin_threads(args.threads), dtype=args.dtype)
    model_dir = Path(args.model)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: not a save_pretrained folder (no config.json); run the init stage")
    from lnpeft.model.init import verify_init
    from lnpeft.model.provenance import check_inputs

    verify_init(model_dir)  # a corrupted init fails here, before any compute
    check_inputs(model_dir, [args.data])  # the init and the split are of one task
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if cfg.device == "auto" else cfg.device))
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_for_fisher(model_dir, cfg.dtype)
    model.to(device).eval()

    df = select_rows(read_parquet(args.data, "data"), cfg.max_samples, cfg.seed, args.data)
    if model.config.num_labels > 1 and not np.allclose(df["label"], df["label"].round()):
        raise ValueError(f"{args.data}: float labels for a {model.config.num_labels}-label classifier")
    data = encode(df, tokenizer, cfg.max_length)
    order = length_grouped_batches(data.lengths, cfg.batch_size, seed=None)
    start = time.perf_counter()
    fisher, piece_means, n = compute_fisher_streamed(model, (collate(data, idx) for idx in order), device)
    entries, comps = fisher_tables(model, fisher, piece_means)
    meta = {"lnpeft": json.dumps({**asdict(cfg), "model": str(model_dir), "data": str(args.data),
                                  "n_samples": n, "device": str(device)}, sort_keys=True)}
    write_parquet(entries, args.out, "fisher", metadata=meta)
    if args.components_out:
        write_parquet(comps, args.components_out, "fisher_components", metadata=meta)
    print(f"fisher: {n} examples, {len(order)} batches, {time.perf_counter() - start:.1f}s on {device}; "
          f"{len(entries)} LayerNorm entries -> {args.out}")
    return 0
