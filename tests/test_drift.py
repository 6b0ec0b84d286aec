"""Drift D (paper Eq. 1) against a direct computation on two saved tiny models."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

from lnpeft.cli import main
from lnpeft.data.artifacts import read_parquet


def tiny(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=12, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(cfg)


@pytest.fixture
def saved_pair(tmp_path):
    pre = tiny(0)
    post = tiny(0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in post.named_parameters():
            # different scales per component, so a mix-up of components shows
            scale = 0.5 if name.endswith((".0.output.LayerNorm.bias", "2.output.LayerNorm.weight")) else 0.01
            p.add_(scale * torch.randn(p.shape, generator=gen))
    pre.save_pretrained(tmp_path / "pre")
    post.save_pretrained(tmp_path / "post")
    return tmp_path / "pre", tmp_path / "post"


def test_drift_equals_direct_computation(saved_pair, tmp_path):
    pre_dir, post_dir = saved_pair
    out = tmp_path / "drift.parquet"
    assert main(["drift", "--pre", str(pre_dir), "--post", str(post_dir), "--out", str(out)]) == 0
    df = read_parquet(out, "drift")
    assert len(df) == 3 * 8 * 3  # layers x components x (weight, bias, all)
    # direct: read the saved safetensors files, no lnpeft code
    a = load_file(pre_dir / "model.safetensors")
    b = load_file(post_dir / "model.safetensors")
    for layer in range(3):
        for comp in ["attention.self.query", "intermediate.dense", "output.LayerNorm"]:
            w = f"bert.encoder.layer.{layer}.{comp}.weight"
            bias = f"bert.encoder.layer.{layer}.{comp}.bias"
            dw = (b[w].double() - a[w].double()).abs()
            db = (b[bias].double() - a[bias].double()).abs()
            rows = df[(df.layer == layer) & (df.component == comp)].set_index("kind")
            assert rows.loc["weight", "D"] == pytest.approx(dw.mean().item(), rel=1e-12)
            assert rows.loc["bias", "D"] == pytest.approx(db.mean().item(), rel=1e-12)
            assert rows.loc["all", "n"] == dw.numel() + db.numel()
            pooled = (dw.sum() + db.sum()) / (dw.numel() + db.numel())
            assert rows.loc["all", "D"] == pytest.approx(pooled.item(), rel=1e-12)
    # only the perturbed tensors moved a lot: layer 0's output-LN bias, layer 2's output-LN weight
    big = df[df.D > 0.1]
    assert sorted(zip(big.layer, big.kind)) == [(0, "all"), (0, "bias"), (2, "all"), (2, "weight")]
    assert set(big.component) == {"output.LayerNorm"}


def test_identical_models_have_zero_drift(saved_pair, tmp_path):
    pre_dir, _ = saved_pair
    out = tmp_path / "zero.parquet"
    assert main(["drift", "--pre", str(pre_dir), "--post", str(pre_dir), "--out", str(out)]) == 0
    assert (read_parquet(out, "drift")["D"] == 0).all()


def test_missing_folder_is_a_clear_error(saved_pair, tmp_path, capsys):
    pre_dir, _ = saved_pair
    assert main(["drift", "--pre", str(pre_dir), "--post", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "x.parquet")]) == 2
    assert "nope: not a save_pretrained folder" in capsys.readouterr().err
