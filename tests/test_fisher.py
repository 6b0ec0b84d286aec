"""Batched per-sample Fisher (hooks) against a naive batch-size-1 loop, on tiny in-test BERTs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from lnpeft.analysis.fisher import compute_fisher, per_sample_loss_sum
from lnpeft.analysis.grad_sample import (SquaredGradSampler, compute_linear_grad_sample, compute_norm_grad_sample,
                                         get_grad_sampler)
from lnpeft.cli import main
from lnpeft.data.artifacts import read_parquet, write_parquet
from lnpeft.model.architectures import COMPONENTS, for_config, get_architecture

WORDS = "the a cat dog sat on mat ran fast slow big small red blue green house tree went home".split()


def tiny_bert(num_labels: int, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=num_labels,
                     initializer_range=0.3,  # big enough that query/key gradients are not ~0
                     hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    model = BertForSequenceClassification(cfg)
    # pretrained-like LayerNorms (not exactly 1/0) so weight and bias entries differ
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def naive_fisher(model: torch.nn.Module, examples: list[tuple[torch.Tensor, float]]) -> dict[str, torch.Tensor]:
    """The reference: one example at a time, no padding, loss.backward, .grad ** 2."""
    arch = for_config(model.config)
    sums: dict[str, torch.Tensor] = {}
    for ids, label in examples:
        model.zero_grad()
        logits = model(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None]).logits
        per_sample_loss_sum(logits, torch.tensor([label])).backward()
        for name, p in model.named_parameters():
            if arch.pieces(name):
                sums[name] = sums.get(name, 0) + p.grad.detach().double() ** 2
    return {k: v / len(examples) for k, v in sums.items()}


def padded_batches(examples, batch_size):
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk) + 3  # extra padding beyond the longest too
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (x, _) in enumerate(chunk):
            ids[row, :len(x)] = x
            mask[row, :len(x)] = 1
        out.append({"input_ids": ids, "attention_mask": mask,
                    "labels": torch.tensor([y for _, y in chunk])})
    return out


def make_examples(num_labels: int, n: int = 7, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    examples = []
    for j in range(n):
        length = 3 + j * 2  # different lengths: every batch has padding
        ids = torch.randint(5, 64, (length,), generator=gen)
        ids[0] = 2
        label = float(j % num_labels) if num_labels > 1 else float(torch.rand(1, generator=gen)) * 5
        examples.append((ids, label))
    return examples


@pytest.mark.parametrize("num_labels", [3, 1], ids=["classification", "regression"])
def test_batched_fisher_equals_per_sample_loop(num_labels):
    model = tiny_bert(num_labels)
    examples = make_examples(num_labels)
    reference = naive_fisher(model, examples)
    batched, n = compute_fisher(model, padded_batches(examples, batch_size=4))
    assert n == len(examples)
    assert set(batched) == set(reference)
    kinds = {get_architecture("bert").parse(k)[1] for k in batched}
    assert kinds == set(COMPONENTS)  # LayerNorm and Linear kernels both covered
    for name, ref in reference.items():
        got = batched[name]
        assert got.shape == ref.shape
        if name.endswith("attention.self.key.bias"):
            # softmax is invariant to a shift shared by all keys: this gradient is 0 up to rounding
            assert got.abs().max() < 1e-12 and ref.abs().max() < 1e-12, name
            continue
        assert ref.abs().max() > 1e-8, name
        # 1e-5 relative, elementwise; the floor guards entries that are ~0 in both
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()), msg=name)


def test_fisher_is_not_the_squared_mean_gradient():
    """A guard against summing gradients before squaring: sum_j g_j^2 differs from (sum_j g_j)^2."""
    model = tiny_bert(2)
    examples = make_examples(2, n=4)
    batched, _ = compute_fisher(model, padded_batches(examples, batch_size=4))
    model.zero_grad()
    for ids, y in examples:
        per_sample_loss_sum(model(input_ids=ids[None]).logits, torch.tensor([y])).backward()
    name = "bert.encoder.layer.1.output.LayerNorm.bias"
    squared_mean = dict(model.named_parameters())[name].grad.double() ** 2 / 4
    assert not torch.allclose(batched[name], squared_mean, rtol=1e-3)


def test_layer_norm_kernel_skips_frozen_and_matches_autograd():
    torch.manual_seed(0)
    ln = torch.nn.LayerNorm(5)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 4, 5)
    ln.bias.requires_grad_(False)
    y = ln(x)
    g = torch.randn_like(y)
    out = compute_norm_grad_sample(ln, x, g)
    assert set(out) == {ln.weight}
    expected = torch.zeros(5)
    for b in range(3):
        (grad,) = torch.autograd.grad(ln(x[b:b + 1]), ln.weight, g[b:b + 1])
        expected += grad ** 2
    torch.testing.assert_close(out[ln.weight], expected)
    assert get_grad_sampler(ln) is compute_norm_grad_sample
    assert get_grad_sampler(torch.nn.Linear(2, 2)) is compute_linear_grad_sample


def test_sampler_rejects_unknown_layer():
    with pytest.raises(ValueError, match="no per-sample gradient kernel for Conv1d"):
        SquaredGradSampler({"c": torch.nn.Conv1d(1, 1, 1)})


def save_tiny(tmp_path, num_labels):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab))
    model = tiny_bert(num_labels)
    folder = tmp_path / "init"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    rng = np.random.default_rng(0)
    n = 13
    df = pd.DataFrame({
        "idx": np.arange(n, dtype=np.int64),
        "text_a": [" ".join(rng.choice(WORDS, size=rng.integers(2, 12))) for _ in range(n)],
        "text_b": [None] * n,
        "label": (pd.array(rng.integers(0, num_labels, n), dtype="Int64") if num_labels > 1
                  else rng.uniform(0, 5, n)),
    })
    write_parquet(df, tmp_path / "train.parquet", "data")
    return folder, tmp_path / "train.parquet"


@pytest.mark.parametrize("num_labels", [2, 1], ids=["classification", "regression"])
def test_cli_writes_fisher_artifacts(tmp_path, num_labels):
    folder, data = save_tiny(tmp_path, num_labels)
    out, comps = tmp_path / "f.parquet", tmp_path / "f.components.parquet"
    argv = ["fisher", "--model", str(folder), "--data", str(data), "--out", str(out),
            "--components-out", str(comps), "--batch-size", "4", "--max-samples", "10"]
    assert main(argv) == 0
    fisher = read_parquet(out, "fisher")
    assert len(fisher) == 2 * 2 * 16  # 2 layers x (weight, bias) x hidden 16
    assert set(fisher["component"]) == {"output.LayerNorm"}
    assert (fisher["fisher"] >= 0).all() and fisher["fisher"].sum() > 0
    components = read_parquet(comps, "fisher_components")
    assert len(components) == 2 * 8 * 2
    # the component mean of output.LayerNorm equals the mean of its entries
    ln = components.query("layer == 1 and component == 'output.LayerNorm' and kind == 'bias'")
    entries = fisher.query("layer == 1 and kind == 'bias'")["fisher"]
    assert ln["n"].item() == 16 and ln["fisher"].item() == pytest.approx(entries.mean(), rel=1e-12)
    meta = json.loads(pq.read_schema(out).metadata[b"lnpeft"])
    assert meta["n_samples"] == 10 and meta["batch_size"] == 4
    # batch size does not change the result; the run is deterministic
    out2 = tmp_path / "f2.parquet"
    assert main(argv[:5] + ["--out", str(out2), "--batch-size", "3", "--max-samples", "10"]) == 0
    np.testing.assert_allclose(read_parquet(out2, "fisher")["fisher"], fisher["fisher"], rtol=1e-5)


def test_cli_rejects_unlabelled_split(tmp_path, capsys):
    folder, data = save_tiny(tmp_path, 2)
    df = read_parquet(data, "data")
    df["label"] = pd.array([None] * len(df), dtype="Int64")
    write_parquet(df, tmp_path / "test.parquet", "data")
    assert main(["fisher", "--model", str(folder), "--data", str(tmp_path / "test.parquet"),
                 "--out", str(tmp_path / "x.parquet")]) == 2
    assert "have no label" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_max_samples_accepts_yaml_null():
    """The workflow passes config values verbatim: fisher.max_samples: null arrives as 'None'."""
    import argparse

    from lnpeft.analysis.fisher import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--model", "m", "--data", "d", "--out", "o"]
    assert parser.parse_args(base + ["--max-samples", "None"]).max_samples is None
    assert parser.parse_args(base + ["--max-samples", "64"]).max_samples == 64


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: not enough memory")])
def test_out_of_memory_names_the_batch_and_the_knobs(monkeypatch, error):
    from lnpeft.errors import OutOfMemoryError

    model = tiny_bert(2)
    examples = [(torch.randint(1, 64, (5,)), 1)] * 6
    batches = padded_batches(examples, 4)
    calls = {"n": 0}
    original = type(model).forward

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", forward)
    if "out of memory" not in str(error).lower():  # not an OOM: passed on unchanged
        with pytest.raises(RuntimeError, match="^DefaultCPUAllocator: not enough memory$"):
            compute_fisher(model, batches)
        return
    with pytest.raises(OutOfMemoryError) as err:
        compute_fisher(model, batches)
    assert str(err.value) == ("fisher: out of memory on a batch of 2 examples x 8 tokens on cpu (after 4 "
                              "examples); lower fisher.batch_size (--batch-size) or training.max_length "
                              "(--max-length)")
    assert err.value.__cause__ is error


@pytest.mark.parametrize("family", ["bert", "deberta-v2", "modernbert"])
def test_fisher_loads_a_padded_attention_implementation(tmp_path, family):
    """An unpadded (varlen) attention backend would hand the kernels [tokens, hidden] activations;
    the Fisher pins SDPA, or eager where a family has no SDPA."""
    from test_families_workflow import save_tiny_encoder

    from lnpeft.analysis.fisher import load_for_fisher

    save_tiny_encoder(tmp_path / "m", family)
    model = load_for_fisher(tmp_path / "m")
    assert model.config._attn_implementation in ("sdpa", "eager")
    assert next(model.parameters()).dtype == torch.float32


def naive_fisher_bf16(model: torch.nn.Module, examples: list[tuple[torch.Tensor, float]]) -> dict[str, torch.Tensor]:
    """`naive_fisher` of a model held as a bf16 run holds it: the forward under bf16 autocast, the
    loss in fp32, autograd's .grad (bf16 for bf16 weights, fp32 for the norms) squared."""
    arch = for_config(model.config)
    sums: dict[str, torch.Tensor] = {}
    for ids, label in examples:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None]).logits
        per_sample_loss_sum(logits.float(), torch.tensor([label])).backward()
        for name, p in model.named_parameters():
            if arch.pieces(name):
                sums[name] = sums.get(name, 0) + p.grad.detach().double() ** 2
    return {k: v / len(examples) for k, v in sums.items()}


@pytest.mark.parametrize("num_labels", [3, 1], ids=["classification", "regression"])
def test_bf16_fisher_equals_the_loop_over_the_same_bf16_model(num_labels):
    """`--dtype bfloat16`: weights in bf16, norms in fp32, bf16 autocast. The batched Fisher equals
    the batch-size-1 loop of the same model within bf16's rounding (the padded batch and the single
    example round their activations differently), and stays close to the fp32 model's Fisher."""
    from lnpeft.model.weight_dtype import hold

    examples = make_examples(num_labels)
    exact, _ = compute_fisher(tiny_bert(num_labels), padded_batches(examples, batch_size=4))
    model = tiny_bert(num_labels)
    hold(model, (), "bfloat16")
    assert {p.dtype for n, p in model.named_parameters() if "LayerNorm" in n} == {torch.float32}
    assert model.bert.encoder.layer[0].intermediate.dense.weight.dtype == torch.bfloat16
    reference = naive_fisher_bf16(model, examples)
    batched, n = compute_fisher(model, padded_batches(examples, batch_size=4))
    assert n == len(examples) and set(batched) == set(reference) == set(exact)
    for name, ref in reference.items():
        got = batched[name]
        assert got.dtype == torch.float64 and got.shape == ref.shape
        if name.endswith("attention.self.key.bias"):
            continue  # 0 up to rounding (test_batched_fisher_equals_per_sample_loop)
        scale = float(ref.abs().max())
        assert scale > 1e-8, name
        # measured here: at most 1.6% of the tensor's largest entry against the loop, 9.3% against the
        # fp32 model (bf16 weights and activations); bounds with room for another CPU's bf16 kernels
        torch.testing.assert_close(got, ref, rtol=0.05, atol=0.04 * scale, msg=name)
        assert float((got - exact[name]).abs().max()) <= 0.2 * float(exact[name].abs().max()), name
    # the LayerNorm entries the Fisher subsets rank keep their order
    ln = [k for k in batched if "output.LayerNorm" in k and "attention" not in k]
    a, b = torch.cat([batched[k] for k in ln]), torch.cat([exact[k] for k in ln])
    assert np.corrcoef(a.argsort().argsort().numpy(), b.argsort().argsort().numpy())[0, 1] > 0.99


def test_cli_takes_dtype_bfloat16(tmp_path):
    folder, data = save_tiny(tmp_path, 2)
    tables = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"{dtype}.parquet"
        assert main(["fisher", "--model", str(folder), "--data", str(data), "--out", str(out), "--batch-size", "4",
                     "--dtype", dtype]) == 0
        assert json.loads(pq.read_schema(out).metadata[b"lnpeft"])["dtype"] == dtype
        tables[dtype] = read_parquet(out, "fisher")["fisher"].to_numpy()
    assert not np.array_equal(tables["float32"], tables["bfloat16"])  # the option is applied
    np.testing.assert_allclose(tables["bfloat16"], tables["float32"], rtol=0.1, atol=0.02 * tables["float32"].max())
