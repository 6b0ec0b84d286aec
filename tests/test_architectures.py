"""Encoder families beyond BERT: each row of lnpeft.architectures on a tiny random-config model of
that family, checked against counts and names written out here by hand, and the batched Fisher
against the batch-size-1 loop."""

from __future__ import annotations

import re

import pytest
import torch
from test_fisher import make_examples, naive_fisher, padded_batches
from transformers import AutoConfig, AutoModelForSequenceClassification

from lnpeft.architectures import ARCHITECTURES, COMPONENTS, get_architecture
from lnpeft.batching import model_inputs
from lnpeft.fisher import component_modules, compute_fisher
from lnpeft.methods import MethodOptions, count, select

SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=64,
             max_position_embeddings=64, initializer_range=0.3)
CONFIGS = {
    "bert": SMALL,
    "roberta": {**SMALL, "pad_token_id": 1},
    "xlm-roberta": {**SMALL, "pad_token_id": 1},
    "electra": {**SMALL, "embedding_size": 16},
    "deberta-v2": {**SMALL, "relative_attention": True, "pos_att_type": ["p2c", "c2p"], "max_relative_positions": 16},
    "distilbert": dict(dim=16, n_layers=2, n_heads=2, hidden_dim=32, vocab_size=64, max_position_embeddings=64,
                       initializer_range=0.3),
}
# written out by hand per family, independently of lnpeft.architectures
OUTPUT_LN = {"distilbert": "output_layer_norm"}
LAYER = {"distilbert": "transformer.layer"}
HEAD = {"bert": ("classifier.",), "roberta": ("classifier.",), "xlm-roberta": ("classifier.",),
        "electra": ("classifier.",), "deberta-v2": ("pooler.", "classifier."),
        "distilbert": ("pre_classifier.", "classifier.")}
PREFIX = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "electra": "electra",
          "deberta-v2": "deberta", "distilbert": "distilbert"}


def tiny(model_type: str, num_labels: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, num_labels=num_labels, **CONFIGS[model_type])
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():  # pretrained-like norms (not exactly 1/0), so weight and bias entries differ
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_every_row_has_a_tiny_model_here():
    assert set(ARCHITECTURES) == set(CONFIGS)


@pytest.mark.parametrize("model_type", CONFIGS)
def test_row_names_the_models_base_and_its_eight_components(model_type):
    model = tiny(model_type)
    arch = get_architecture(model.config.model_type)
    assert arch.base == model.base_model_prefix == PREFIX[model_type]
    parsed = {arch.parse(n) for n, _ in model.named_parameters()} - {None}
    assert parsed == {(layer, c, k) for layer in range(2) for c in COMPONENTS for k in ("weight", "bias")}
    names = {n for n, _ in model.named_parameters()}
    for layer, component, kind in parsed:
        assert arch.param_name(layer, component, kind) in names


@pytest.mark.parametrize("model_type", CONFIGS)
def test_method_counts_equal_a_brute_force_count(model_type):
    model = tiny(model_type)
    params = dict(model.named_parameters())
    head = sum(p.numel() for n, p in params.items() if n.startswith(HEAD[model_type]))
    outside = [n for n in params if not n.startswith(f"{PREFIX[model_type]}.")]
    assert all(n.startswith(HEAD[model_type]) for n in outside)  # the head is all that is outside the base
    ln_suffix = OUTPUT_LN.get(model_type, "output.LayerNorm")
    layer = f"{PREFIX[model_type]}.{LAYER.get(model_type, 'encoder.layer')}."
    ln_re = re.compile(rf"^{re.escape(layer)}\d+\.{re.escape(ln_suffix)}\.(weight|bias)$")
    ln = sum(p.numel() for n, p in params.items() if ln_re.match(n))
    assert ln == 2 * 2 * 16
    biases = sum(p.numel() for n, p in params.items() if n.endswith(".bias") and not n.startswith(HEAD[model_type]))
    expected = {"full": sum(p.numel() for p in params.values()), "layernorm": ln + head,
                "bitfit": biases + head, "random": ln + head}
    for method, n in expected.items():
        assert count(model, method)["trainable"] == n, method
    # the random control draws only inside the encoder layers
    chosen = select(model, "random", MethodOptions(seed=3))
    assert all(n.startswith(layer) or n.startswith(HEAD[model_type]) for n in chosen.names)


@pytest.mark.parametrize("model_type", [m for m in CONFIGS if m != "bert"])  # BERT: tests/test_fisher.py
@pytest.mark.parametrize("num_labels", [3, 1], ids=["classification", "regression"])
def test_batched_fisher_equals_per_sample_loop(model_type, num_labels):
    model = tiny(model_type, num_labels)
    examples = [(ids.clamp(max=63), y) for ids, y in make_examples(num_labels)]
    reference = naive_fisher(model, examples)
    batched, n = compute_fisher(model, padded_batches(examples, batch_size=4))
    assert n == len(examples) and set(batched) == set(reference)
    assert len(component_modules(model)) == 2 * len(COMPONENTS)
    for name, ref in reference.items():
        got = batched[name]
        if ref.abs().max() < 1e-12:  # key biases: softmax ignores a shift shared by all keys
            assert got.abs().max() < 1e-12, name
            continue
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()), msg=name)


def test_token_types_only_for_families_that_take_them():
    batch = {"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "token_type_ids": torch.zeros(1, 3, dtype=torch.long), "labels": torch.zeros(1)}
    assert set(model_inputs(tiny("bert"), batch)) == {"input_ids", "attention_mask", "token_type_ids"}
    distil = tiny("distilbert")
    assert set(model_inputs(distil, batch)) == {"input_ids", "attention_mask"}
    assert distil(**model_inputs(distil, batch)).logits.shape == (1, 2)


def test_deberta_v3_shared_projections_are_a_clear_fisher_error(monkeypatch):
    """share_att_key (DeBERTa-v3): key/query projections run twice per forward; the error names one."""
    monkeypatch.setitem(CONFIGS, "deberta-v2", {**CONFIGS["deberta-v2"], "share_att_key": True})
    model = tiny("deberta-v2")
    examples = [(ids.clamp(max=63), y) for ids, y in make_examples(2)]
    with pytest.raises(RuntimeError, match=r"deberta\.encoder\.layer\.\d\.attention\.self\.(key|query)_proj ran "
                                           r"more than once .* share_att_key false"):
        compute_fisher(model, padded_batches(examples, batch_size=4))
