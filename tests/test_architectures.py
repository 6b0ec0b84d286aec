"""Encoder families beyond BERT: each row of lnpeft.model.architectures on a tiny random-config model of
that family, checked against counts and names written out here by hand, and the batched Fisher
against the batch-size-1 loop."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch
from test_fisher import make_examples, naive_fisher, padded_batches
from transformers import AutoConfig, AutoModelForSequenceClassification

from lnpeft.analysis.fisher import component_modules, compute_fisher
from lnpeft.data.batching import model_inputs
from lnpeft.model.architectures import ARCHITECTURES, COMPONENTS, for_config, get_architecture
from lnpeft.model.methods import MethodOptions, count, select
from lnpeft.model.norms import norm_of

SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=64,
             max_position_embeddings=64, initializer_range=0.3)
GATED = ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text")
"""The decoders of the Llama layout (gated MLP, RMSNorm)."""
CONFIGS = {
    "bert": SMALL,
    "roberta": {**SMALL, "pad_token_id": 1},
    "xlm-roberta": {**SMALL, "pad_token_id": 1},
    "electra": {**SMALL, "embedding_size": 16},
    "deberta-v2": {**SMALL, "relative_attention": True, "pos_att_type": ["p2c", "c2p"], "max_relative_positions": 16},
    "distilbert": dict(dim=16, n_layers=2, n_heads=2, hidden_dim=32, vocab_size=64, max_position_embeddings=64,
                       initializer_range=0.3),
    # special tokens inside the tiny vocabulary; global attention in layer 0, a 4-token window in layer 1
    "modernbert": {**SMALL, "pad_token_id": 0, "bos_token_id": 1, "cls_token_id": 1, "eos_token_id": 2,
                   "sep_token_id": 2, "local_attention": 4, "global_attn_every_n_layers": 2},
    # decoders: the classification head reads the last token that is not padding (id 0 here);
    # grouped-query attention (2 query heads share 1 key/value head) where the family has it
    **{family: {**SMALL, "num_key_value_heads": 1, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 2,
                "head_dim": 8, "tie_word_embeddings": False} for family in GATED},
    "gpt2": dict(n_embd=16, n_layer=2, n_head=2, n_inner=32, vocab_size=64, n_positions=64, initializer_range=0.3,
                 pad_token_id=0, bos_token_id=2, eos_token_id=2),
}
DECODERS = (*GATED, "gpt2")
# written out by hand per family, independently of lnpeft.model.architectures
OUTPUT_LN = {"distilbert": "output_layer_norm"}
LAYER = {"distilbert": "transformer.layer", "modernbert": "layers", **dict.fromkeys(DECODERS, "layers"),
         "gpt2": "h"}
HEAD = {"bert": ("classifier.",), "roberta": ("classifier.",), "xlm-roberta": ("classifier.",),
        "electra": ("classifier.",), "deberta-v2": ("pooler.", "classifier."),
        "distilbert": ("pre_classifier.", "classifier."), "modernbert": ("head.", "classifier."),
        **dict.fromkeys(DECODERS, ("score.",))}
PREFIX = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "electra": "electra",
          "deberta-v2": "deberta", "distilbert": "distilbert", "modernbert": "model",
          **dict.fromkeys(DECODERS, "model"), "gpt2": "transformer"}
# ModernBERT (pre-LN, 2 layers): the norms that hand each layer's stream on, and no biases at all
MODERNBERT_OUTPUT_LN = ("model.layers.1.attn_norm.weight", "model.final_norm.weight")
# the pre-LN families' output LayerNorms, written out: layer 1's input norm and the final norm
PRE_LN_OUTPUT = {"modernbert": MODERNBERT_OUTPUT_LN,
                 **dict.fromkeys(GATED, ("model.layers.1.input_layernorm.weight", "model.norm.weight")),
                 "gpt2": ("transformer.h.1.ln_1.weight", "transformer.h.1.ln_1.bias", "transformer.ln_f.weight",
                          "transformer.ln_f.bias")}
KINDS = {"modernbert": ("weight",), **dict.fromkeys(GATED, ("weight",))}
# (component, kind) a family holds more than once per layer, or only for some components
EXTRA = {f: [("intermediate.dense", "weight")] for f in GATED}  # gate and up
EXTRA["qwen2"] = EXTRA["qwen2"] + [(c, "bias") for c in COMPONENTS[:3]]  # q, k, v biases only
KINDS["qwen2"] = ("weight",)


def tiny(model_type: str, num_labels: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, num_labels=num_labels, **CONFIGS[model_type])
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():  # pretrained-like norms (not exactly 1/0), so weight and bias entries differ
        for module in model.modules():
            if norm_of(module) is not None:
                for p in module.parameters():
                    p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def arch_pool(model, name: str) -> bool:
    return for_config(model.config).is_encoder(name)


def test_every_row_has_a_tiny_model_here():
    assert set(ARCHITECTURES) == set(CONFIGS)


@pytest.mark.parametrize("model_type", CONFIGS)
def test_row_names_the_models_base_and_its_eight_components(model_type):
    model = tiny(model_type)
    arch = for_config(model.config)
    assert arch.base == model.base_model_prefix == PREFIX[model_type]
    pieces = [p for n, _ in model.named_parameters() for p in arch.pieces(n)]
    kinds = KINDS.get(model_type, ("weight", "bias"))
    expected = [(layer, c, k) for layer in range(2) for c in COMPONENTS for k in kinds]
    expected += [(layer, c, k) for layer in range(2) for c, k in EXTRA.get(model_type, [])]
    assert sorted(p[:3] for p in pieces) == sorted(expected)  # each once, and what EXTRA adds
    names = {n for n, _ in model.named_parameters()}
    for piece in pieces:
        assert arch.param_name(*piece[:3]) in names


def test_modernbert_pieces_are_written_out_by_hand():
    """Fused Wqkv: query, key, value are its row thirds; pre-LN: layer i's output LayerNorm is
    layer i+1's attn_norm, the last layer's is final_norm; layer 0's attn_norm has no weights."""
    model = tiny("modernbert")
    arch = for_config(model.config)
    qkv = arch.pieces("model.layers.1.attn.Wqkv.weight")
    assert [(p.component, p.part, p.parts) for p in qkv] == [
        ("attention.self.query", 0, 3), ("attention.self.key", 1, 3), ("attention.self.value", 2, 3)]
    weight = dict(model.named_parameters())["model.layers.1.attn.Wqkv.weight"]
    assert torch.equal(qkv[1].take(weight), weight[16:32])
    assert arch.parse("model.layers.1.attn_norm.weight") == (0, "output.LayerNorm", "weight")
    assert arch.parse("model.final_norm.weight") == (1, "output.LayerNorm", "weight")
    assert arch.parse("model.layers.0.mlp_norm.weight") == (0, "attention.output.LayerNorm", "weight")
    assert arch.pieces("model.embeddings.norm.weight") == [] and arch.pieces("head.norm.weight") == []
    assert isinstance(model.model.layers[0].attn_norm, torch.nn.Identity)
    with pytest.raises(ValueError, match="layer count is unknown"):
        get_architecture("modernbert").pieces("model.final_norm.weight")


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text"])
def test_gemma_2_and_3_sandwich_norms_are_written_out_by_hand(model_type):
    """The MLP reads through pre_feedforward_layernorm (attention.output.LayerNorm); the norms on a
    sublayer's output (and Gemma 3's q_norm, k_norm) are no component, yet inside the encoder."""
    model = tiny(model_type)
    arch = for_config(model.config)
    assert arch.parse("model.layers.1.pre_feedforward_layernorm.weight") == (1, "attention.output.LayerNorm", "weight")
    assert arch.parse("model.layers.1.input_layernorm.weight") == (0, "output.LayerNorm", "weight")
    assert arch.parse("model.norm.weight") == (1, "output.LayerNorm", "weight")
    others = ["post_attention_layernorm", "post_feedforward_layernorm"]
    others += ["self_attn.q_norm", "self_attn.k_norm"] if model_type == "gemma3_text" else []
    params = dict(model.named_parameters())
    for module in others:
        name = f"model.layers.1.{module}.weight"
        assert name in params and arch.pieces(name) == [] and arch.is_encoder(name), name
        assert type(dict(model.named_modules())[name[:-len(".weight")]]).__name__.endswith("RMSNorm")
    assert not [n for n in select(model, "layernorm").names if any(f".{m}." in n for m in others)]


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
    if model_type in PRE_LN_OUTPUT:
        ln = sum(params[n].numel() for n in PRE_LN_OUTPUT[model_type])
        assert ln == len(PRE_LN_OUTPUT[model_type]) * 16
    else:
        ln = sum(p.numel() for n, p in params.items() if ln_re.match(n))
        assert ln == 2 * 2 * 16
    biases = sum(p.numel() for n, p in params.items() if n.endswith(".bias") and not n.startswith(HEAD[model_type]))
    expected = {"full": sum(p.numel() for p in params.values()), "layernorm": ln + head, "random": ln + head}
    if biases:
        expected["bitfit"] = biases + head
    else:  # a bias-free model: BitFit would train the head alone, so it is an error
        with pytest.raises(ValueError, match="'bitfit' selects nothing.*no biases outside its head"):
            count(model, "bitfit")
    for method, n in expected.items():
        assert count(model, method)["trainable"] == n, method
    # the random control draws only inside the encoder (a pre-LN final norm included)
    chosen = select(model, "random", MethodOptions(seed=3))
    pool = {n for n in params if n.startswith(layer) or n in PRE_LN_OUTPUT.get(model_type, ())}
    if model_type in PRE_LN_OUTPUT:  # layer 0's input norm normalises the embeddings: not a component
        pool -= {n for n in params if re.match(rf"^{re.escape(layer)}0\.(input_layernorm|ln_1|attn_norm)\.", n)}
    assert set(chosen.names) - pool <= {n for n in params if n.startswith(HEAD[model_type])}
    assert {n for n in params if arch_pool(model, n)} == pool


@pytest.mark.parametrize("model_type", [m for m in CONFIGS if m != "bert"])  # BERT: tests/test_fisher.py
@pytest.mark.parametrize("num_labels", [3, 1], ids=["classification", "regression"])
def test_batched_fisher_equals_per_sample_loop(model_type, num_labels):
    model = tiny(model_type, num_labels)
    examples = [(ids.clamp(max=63), y) for ids, y in make_examples(num_labels)]
    reference = naive_fisher(model, examples)
    batched, n = compute_fisher(model, padded_batches(examples, batch_size=4))
    assert n == len(examples) and set(batched) == set(reference)
    # one module per component; ModernBERT: Wqkv holds three, layer 0 has no attn_norm, plus final_norm;
    # Llama's layout: gate and up are both intermediate.dense, plus layer 1's input norm and the final
    # norm; GPT-2: c_attn holds three, plus layer 1's ln_1 and ln_f
    modules = {"modernbert": 12, "gpt2": 12, **dict.fromkeys(GATED, 18)}
    assert len(component_modules(model)) == modules.get(model_type, 2 * len(COMPONENTS))
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


@pytest.mark.parametrize("num_labels", [2, 1], ids=["classification", "regression"])
def test_deberta_v3_shared_projections_fisher_equals_the_loop(monkeypatch, num_labels):
    """share_att_key (DeBERTa-v3): key and query projections also run on the relative position
    embeddings, which the batch shares; their per-sample gradients still equal the loop's."""
    import lnpeft.analysis.grad_sample.shared as shared

    monkeypatch.setitem(CONFIGS, "deberta-v2", {**CONFIGS["deberta-v2"], "share_att_key": True,
                                                "position_buckets": 8})
    monkeypatch.setattr(shared, "CHUNK", 3)  # batches of 4: a full and a partial vmapped chunk
    model = tiny("deberta-v2", num_labels)
    assert model.config.share_att_key
    examples = [(ids.clamp(max=63), y) for ids, y in make_examples(num_labels)]
    reference = naive_fisher(model, examples)
    batched, n = compute_fisher(model, padded_batches(examples, batch_size=4))
    assert n == len(examples) and set(batched) == set(reference)
    for name, ref in reference.items():
        if ref.abs().max() < 1e-12:
            assert batched[name].abs().max() < 1e-12, name
            continue
        torch.testing.assert_close(batched[name], ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()), msg=name)


def test_fused_rows_drift_and_fisher_per_component():
    """Query, key and value of ModernBERT's Wqkv are measured on their own row thirds."""
    from lnpeft.analysis.drift import compute_drift
    from lnpeft.analysis.fisher import fisher_tables

    model = tiny("modernbert")
    arch = for_config(model.config)
    pre = {n: p.detach().clone() for n, p in model.named_parameters()}
    post = {n: v.clone() for n, v in pre.items()}
    post["model.layers.1.attn.Wqkv.weight"][16:32] += 0.5  # layer 1's key rows only
    post["model.final_norm.weight"] -= 0.25  # layer 1's output LayerNorm (pre-LN mapping)
    drift = compute_drift(arch, pre, post).set_index(["layer", "component", "kind"])["D"]
    moved = drift[drift > 0]
    assert sorted(moved.index) == [(1, "attention.self.key", "all"), (1, "attention.self.key", "weight"),
                                   (1, "output.LayerNorm", "all"), (1, "output.LayerNorm", "weight")]
    assert moved.loc[(1, "attention.self.key", "weight")] == pytest.approx(0.5)
    assert moved.loc[(1, "output.LayerNorm", "weight")] == pytest.approx(0.25)
    assert len(drift) == 2 * 8 * 2  # weight and all per (layer, component): no biases
    # Fisher: a component's mean is that of its rows of the tensor's per-entry Fisher
    fisher = {n: torch.rand_like(p, dtype=torch.float64) for n, p in model.named_parameters() if arch.pieces(n)}
    entries, comps = fisher_tables(model, fisher)
    comps = comps.set_index(["layer", "component", "kind"])
    wqkv = fisher["model.layers.0.attn.Wqkv.weight"]
    for i, component in enumerate(("attention.self.query", "attention.self.key", "attention.self.value")):
        assert comps.loc[(0, component, "weight"), "fisher"] == pytest.approx(float(wqkv[16 * i:16 * (i + 1)].mean()))
        assert comps.loc[(0, component, "weight"), "n"] == 16 * 16
    assert list(entries["param"].unique()) == list(MODERNBERT_OUTPUT_LN)
    assert entries.groupby("param")["layer"].first().to_dict() == {MODERNBERT_OUTPUT_LN[0]: 0, MODERNBERT_OUTPUT_LN[1]: 1}


@pytest.mark.parametrize("model_type", ["bert", "modernbert", "llama", "gpt2"])
def test_streamed_fisher_gives_the_tables_of_the_whole_one(monkeypatch, model_type):
    """`lnpeft fisher` keeps only the LayerNorm set's entries and one sum per component piece
    between batches (fused blocks included); its tables equal those of the per-entry Fisher."""
    import lnpeft.analysis.grad_sample.hooks as hooks
    from lnpeft.analysis.fisher import compute_fisher_streamed, fisher_tables

    model = tiny(model_type, 3)
    examples = [(ids.clamp(max=63), y) for ids, y in make_examples(3)]
    whole, n = compute_fisher(model, padded_batches(examples, batch_size=4))
    kept = []
    real_exit = hooks.SquaredGradSampler.__exit__

    def spy(self, *exc):  # what the sampler held between batches at the end
        kept.append(sum(v.numel() for v in self.sums.values()))
        return real_exit(self, *exc)

    monkeypatch.setattr(hooks.SquaredGradSampler, "__exit__", spy)
    entries, piece_means, m = compute_fisher_streamed(model, padded_batches(examples, batch_size=4))
    assert m == n
    arch = for_config(model.config)
    params = dict(model.named_parameters())
    ln = [name for name in params if arch.is_layernorm(name)]
    assert sorted(entries) == sorted(ln)
    pieces = sum(len(arch.pieces(name)) for name in params if arch.pieces(name) and name not in ln)
    assert kept == [sum(params[name].numel() for name in ln) + pieces]
    want_entries, want_comps = fisher_tables(model, whole)
    got_entries, got_comps = fisher_tables(model, entries, piece_means)
    pd.testing.assert_frame_equal(got_entries, want_entries)
    pd.testing.assert_frame_equal(got_comps, want_comps, check_exact=False, rtol=1e-12)


@pytest.mark.parametrize("flags", [{}, {"attention_bias": True}, {"mlp_bias": True}, {"norm_bias": True}])
def test_bias_switches_in_config_json_agree_with_the_model(monkeypatch, flags):
    """has_encoder_biases reads config.json alone (the workflow's start-up check); the model decides."""
    from lnpeft.model.architectures import has_encoder_biases

    monkeypatch.setitem(CONFIGS, "modernbert", {**CONFIGS["modernbert"], **flags})
    model = tiny("modernbert")
    try:
        select(model, "bitfit")
        selects = True
    except ValueError:
        selects = False
    assert has_encoder_biases(model.config.to_diff_dict()) is selects is bool(flags)
    assert has_encoder_biases(tiny("bert").config.to_diff_dict())


@pytest.mark.parametrize("model_type", ["bert", "modernbert"])
def test_a_layernorm_set_of_both_norms_is_read_from_config_json(tmp_path, model_type):
    """init --layernorm records the set in config.json; methods, Fisher entries and the random
    control's size all follow it, counted here by module type."""
    from lnpeft.analysis.fisher import fisher_tables
    from lnpeft.model.architectures import LAYERNORM_CONFIG_KEY

    model = tiny(model_type)
    setattr(model.config, LAYERNORM_CONFIG_KEY, ["output.LayerNorm", "attention.output.LayerNorm"])
    model.save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    head = HEAD[model_type]
    norms = [f"{m}.{k}" for m, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm)
             and not m.startswith(head) and "embeddings" not in m for k in ("weight", "bias")
             if getattr(mod, k, None) is not None]
    params = dict(model.named_parameters())
    n_head = sum(p.numel() for n, p in params.items() if n.startswith(head))
    n_norms = sum(params[n].numel() for n in norms)
    # BERT: 2 layers x 2 norms x (weight, bias); ModernBERT: 2 mlp_norm, 1 attn_norm, final_norm, weights only
    assert n_norms == {"bert": 2 * 2 * 2 * 16, "modernbert": 4 * 16}[model_type]
    assert count(model, "layernorm")["trainable"] == count(model, "random")["trainable"] == n_norms + n_head
    fisher = {n: torch.rand_like(p, dtype=torch.float64) for n, p in params.items() if for_config(model.config).pieces(n)}
    entries, _ = fisher_tables(model, fisher)
    assert len(entries) == n_norms
    assert set(entries["component"]) == {"output.LayerNorm", "attention.output.LayerNorm"}
    setattr(model.config, LAYERNORM_CONFIG_KEY, ["intermediate.dense"])
    with pytest.raises(ValueError, match="lnpeft_layernorm: the LayerNorm set must be .* got \\['intermediate.dense'\\]"):
        select(model, "layernorm")


def test_a_7b_random_draw_allocates_only_the_entries_it_draws():
    """A Llama-7B-sized model on the meta device (no weights exist): the random control draws its
    139,264 entries out of 6.6e9 without a permutation of all of them (that would be 53 GB)."""
    import tracemalloc

    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000, num_labels=2, pad_token_id=0)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    tracemalloc.start()
    try:
        chosen = select(model, "random", MethodOptions(seed=0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) > 6.5e9
    drawn = sum(int(i.numel()) for i in chosen.partial.values())
    assert drawn + sum(params[n].numel() for n in chosen.whole) == count(model, "layernorm")["trainable"]
    assert drawn == 32 * 4096 and len(chosen.partial) > 100  # spread over the layers' tensors
    for name, idx in chosen.partial.items():
        assert idx.unique().numel() == idx.numel() and 0 <= int(idx.min()) and int(idx.max()) < params[name].numel()
    assert peak < 64e6, f"the draw allocated {peak / 1e6:.0f} MB"


def test_every_registered_norm_and_linear_class_exists():
    """The tables are keyed by qualified class names (a look-up imports nothing): a misspelt key
    would never match, so each must name a real class, and an instance must find its entry."""
    import importlib

    from lnpeft.model.class_table import qualified_name
    from lnpeft.model.linears import LINEARS, linear_of
    from lnpeft.model.norms import NORMS, norm_of

    for table, find in ((NORMS, norm_of), (LINEARS, linear_of)):
        for name, entry in table.items():
            module, _, cls_name = name.rpartition(".")
            cls = getattr(importlib.import_module(module), cls_name)
            assert qualified_name(cls) == name
            instance = cls.__new__(cls)  # no __init__: the look-up reads the class only
            assert find(instance) is entry
    assert norm_of(torch.nn.Linear(2, 2)) is None and linear_of(torch.nn.LayerNorm(2)) is None
