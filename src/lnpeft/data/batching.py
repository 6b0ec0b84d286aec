"""Tokenise a task's parquet once, then serve length-grouped, dynamically padded batches.

Shared by fine-tuning, Fisher and prediction so that every stage sees the same token ids.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lnpeft.data.artifacts import read_parquet


@dataclass
class Encoded:
    """A tokenised split: ragged token ids plus labels (NaN where unlabelled) and GLUE indices."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: np.ndarray
    idx: np.ndarray
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))


def encode(df: pd.DataFrame, tokenizer, max_length: int) -> Encoded:
    """Tokenise `text_a` (+ `text_b`) with truncation, no padding (padding happens per batch)."""
    text_a = df["text_a"].tolist()
    pair = "text_b" in df and df["text_b"].notna().any()
    text_b = df["text_b"].fillna("").tolist() if pair else None
    enc = tokenizer(text_a, text_b, truncation=True, max_length=max_length,
                    return_token_type_ids=True)
    labels = df["label"].to_numpy(dtype=np.float64, na_value=np.nan)
    return Encoded(enc["input_ids"], enc["token_type_ids"], labels,
                   df["idx"].to_numpy(dtype=np.int64), tokenizer.pad_token_id)


def load_split(path: Path | str, tokenizer, max_length: int, max_samples: int | None = None) -> Encoded:
    """Read `results/data/{task}/{split}.parquet` and tokenise it (optionally the first N rows)."""
    df = read_parquet(path, "data")
    if max_samples is not None:
        df = df.iloc[:max_samples]
    return encode(df, tokenizer, max_length)


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int | None,
                           group_factor: int = 50) -> list[np.ndarray]:
    """Batches of similar-length examples, so padding stays small.

    With a seed (training): shuffle, sort within windows of `group_factor` batches by length, cut
    into batches, shuffle the batch order: random but length-homogeneous. Without a seed
    (evaluation): globally sorted by length, longest first (out-of-memory shows up at once).
    """
    n = len(lengths)
    if seed is None:
        order = np.argsort(-lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    window = batch_size * group_factor
    batches = []
    for start in range(0, n, window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def bucket_width(longest: int, pad_to_multiple: int = 8) -> int:
    """The padded width of a batch whose longest member has `longest` tokens: a length bucket.

    Rounds up to a multiple of min(pad_to_multiple, 2**(floor(log2(longest)) - 3)): at most 8
    widths per power-of-two octave (~30 distinct shapes up to 128, for compiled kernels) while
    rounding adds at most 1/8 of the width. A fixed multiple of 8 padded short GLUE tasks by 23%
    (SST-2, mean 13 tokens, batch 32); these buckets pad every GLUE task by <= 7% (bench/RESULTS.md).
    """
    step = min(pad_to_multiple, max(1, 1 << max(0, longest.bit_length() - 4)))
    return -(-longest // step) * step


def collate(data: Encoded, indices: np.ndarray, pad_to_multiple: int = 8) -> dict[str, torch.Tensor]:
    """Pad one batch to its longest member, rounded up to a length bucket (`bucket_width`)."""
    seqs = [data.input_ids[i] for i in indices]
    width = bucket_width(max(len(s) for s in seqs), pad_to_multiple)
    ids = torch.full((len(seqs), width), data.pad_id, dtype=torch.long)
    types = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        types[row, :n] = torch.tensor(data.token_type_ids[i])
        mask[row, :n] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
            "labels": torch.from_numpy(data.labels[indices])}


@cache
def _takes_token_types(model_class: type) -> bool:
    return "token_type_ids" in inspect.signature(model_class.forward).parameters


def model_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                 device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """The forward arguments of one batch: ids and mask, plus token types for the families whose
    forward takes them (BERT, RoBERTa, ELECTRA, DeBERTa; not DistilBERT)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper's model
    types = "token_type_ids" in batch and _takes_token_types(type(inner))
    keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if types else [])
    return {k: batch[k] if device is None else batch[k].to(device) for k in keys}
