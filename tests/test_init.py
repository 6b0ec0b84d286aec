"""Stage init: seeded heads, byte-identical outputs, encoder equal to the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_checkpoint import make_tiny_checkpoint
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lnpeft import cli
from lnpeft.model.checkpoint import CacheConfig, CheckpointError, cache_model, manifest_sha256
from lnpeft.model.init import InitConfig, make_init


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name, pooler in (("pooled", True), ("nopooler", False)):
        src = make_tiny_checkpoint(root / f"src-{name}", pooler=pooler)
        cache_model(CacheConfig("folder", str(src), str(root / name)))
        out[name] = root / name
    return out


def _init(ck: Path, out: Path, task: str = "rte", seed: int = 0) -> dict[str, torch.Tensor]:
    make_init(InitConfig(str(ck), task, seed, str(out)))
    return load_file(out / "model.safetensors")


def test_same_task_and_seed_give_identical_bytes(checkpoints, tmp_path):
    ck = checkpoints["pooled"]
    _init(ck, tmp_path / "a")
    torch.manual_seed(1234)  # the global RNG state must not matter
    torch.rand(10)
    _init(ck, tmp_path / "b")
    for name in ("model.safetensors", "config.json", "init.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_seeds_differ_in_the_head_only_and_encoder_equals_checkpoint(checkpoints, tmp_path):
    ck = checkpoints["pooled"]
    a = _init(ck, tmp_path / "s0", seed=0)
    b = _init(ck, tmp_path / "s1", seed=1)
    differing = sorted(k for k in a if not torch.equal(a[k], b[k]))
    assert differing == ["classifier.weight"]  # biases start at zero for every seed
    assert torch.equal(a["classifier.bias"], torch.zeros(2))
    assert 0.005 < a["classifier.weight"].std().item() < 0.05  # normal(0, initializer_range=0.02)
    encoder = load_file(ck / "model.safetensors")
    for key, value in encoder.items():
        assert torch.equal(a[f"bert.{key}"], value), key
    info = json.loads((tmp_path / "s0" / "init.json").read_text())
    assert info["new_weights"] == ["classifier.bias", "classifier.weight"]
    assert info["checkpoint_manifest_sha256"] == manifest_sha256(ck)


def test_missing_pooler_is_seeded_too(checkpoints, tmp_path):
    ck = checkpoints["nopooler"]
    a = _init(ck, tmp_path / "a", seed=3)
    b = _init(ck, tmp_path / "b", seed=3)
    c = _init(ck, tmp_path / "c", seed=4)
    assert json.loads((tmp_path / "a" / "init.json").read_text())["new_weights"] == [
        "bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias", "classifier.weight"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(k for k in a if not torch.equal(a[k], c[k])) == ["bert.pooler.dense.weight", "classifier.weight"]


@pytest.mark.parametrize("task, num_labels, problem", [
    ("stsb", 1, "regression"), ("mnli", 3, "single_label_classification"),
])
def test_head_matches_task_and_reloads_offline(checkpoints, tmp_path, task, num_labels, problem):
    out = tmp_path / task
    assert cli.main(["init", "--checkpoint", str(checkpoints["pooled"]), "--task", task,
                     "--seed", "0", "--out", str(out)]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True)
    assert model.config.num_labels == num_labels and model.config.problem_type == problem
    if task == "mnli":
        assert model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    logits = model(**tok(["the cat sat"], return_tensors="pt")).logits
    assert logits.shape == (1, num_labels)


def test_corrupted_checkpoint_is_refused(checkpoints, tmp_path):
    ck = tmp_path / "ck"
    src = make_tiny_checkpoint(tmp_path / "src")
    cache_model(CacheConfig("folder", str(src), str(ck)))
    data = bytearray((ck / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ck / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: sha256 differs"):
        make_init(InitConfig(str(ck), "rte", 0, str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_the_layernorm_set_is_recorded_only_when_it_is_not_the_papers(checkpoints, tmp_path):
    from lnpeft.model.architectures import LAYERNORM_CONFIG_KEY, for_config
    from lnpeft.model.methods import count

    ck = checkpoints["pooled"]
    make_init(InitConfig(str(ck), "rte", 0, str(tmp_path / "paper")))
    assert LAYERNORM_CONFIG_KEY not in json.loads((tmp_path / "paper" / "config.json").read_text())
    both = ("attention.output.LayerNorm", "output.LayerNorm")
    assert cli.main(["init", "--checkpoint", str(ck), "--task", "rte", "--seed", "0", "--out", str(tmp_path / "both"),
                     "--layernorm", "output.LayerNorm", "attention.output.LayerNorm"]) == 0
    assert json.loads((tmp_path / "both" / "config.json").read_text())[LAYERNORM_CONFIG_KEY] == list(both)
    paper, mixed = (AutoModelForSequenceClassification.from_pretrained(tmp_path / d) for d in ("paper", "both"))
    assert for_config(mixed.config).layernorm == both
    # the weights are the same bytes; only the trained set grows by the attention-output norms
    assert (tmp_path / "paper" / "model.safetensors").read_bytes() == (tmp_path / "both" / "model.safetensors").read_bytes()
    ln_attention = sum(p.numel() for n, p in paper.named_parameters() if "attention.output.LayerNorm" in n)
    assert count(mixed, "layernorm")["trainable"] == count(paper, "layernorm")["trainable"] + ln_attention > 0
    with pytest.raises(ValueError, match="--layernorm: the LayerNorm set must be a non-empty list"):
        make_init(InitConfig(str(ck), "rte", 0, str(tmp_path / "bad"), ("output.dense",)))


def test_a_bf16_init_is_the_fp32_init_rounded_and_its_runs_are_bit_identical(checkpoints, tmp_path):
    """`lnpeft init --dtype bfloat16`: every tensor is the fp32 init's rounded to bf16, in about half
    the bytes; a `--dtype bfloat16` run trains from it exactly as from the fp32 init (it loads that
    in bf16); a float32 run refuses it, before writing anything."""
    from test_finetune import make_split

    from lnpeft.train import finetune as ft

    ck = checkpoints["pooled"]
    full = _init(ck, tmp_path / "fp32", task="sst2")
    assert cli.main(["init", "--checkpoint", str(ck), "--task", "sst2", "--seed", "0", "--out",
                     str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    half = load_file(tmp_path / "bf16" / "model.safetensors")
    assert sorted(half) == sorted(full)
    for name, value in half.items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, full[name].to(torch.bfloat16)), name
    payload = [sum(v.nbytes for v in t.values()) for t in (full, half)]
    assert 2 * payload[1] == payload[0]
    sizes = [(tmp_path / d / "model.safetensors").stat().st_size for d in ("fp32", "bf16")]
    # the headers differ only in dtype names and offsets' digits
    assert sizes[0] - sizes[1] == pytest.approx(payload[0] - payload[1], abs=256)
    assert json.loads((tmp_path / "bf16" / "init.json").read_text())["options"]["dtype"] == "bfloat16"

    train, dev = make_split(tmp_path / "train.parquet", 48, seed=1), make_split(tmp_path / "dev.parquet", 16, seed=2)
    outs = {}
    for init in ("fp32", "bf16"):
        outs[init] = tmp_path / "runs" / init
        ft.finetune(ft.FinetuneConfig(init=tmp_path / init, train=train, dev=(dev,), out=outs[init], task="sst2",
                                      method="random", lr=1e-2, seed=0, epochs=2, batch_size=8, recipe="gpu",
                                      dtype="bfloat16", threads=1))
    for name in ("state.safetensors", "predictions.parquet"):
        assert (outs["fp32"] / name).read_bytes() == (outs["bf16"] / name).read_bytes(), name
    with pytest.raises(CheckpointError, match=r"the init was saved in bfloat16 .* run with --dtype bfloat16"):
        ft.finetune(ft.FinetuneConfig(init=tmp_path / "bf16", train=train, dev=(dev,), out=tmp_path / "runs" / "f32",
                                      task="sst2", method="layernorm", lr=1e-2, seed=0, epochs=1, threads=1))
    assert not (tmp_path / "runs" / "f32").exists()


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


@pytest.mark.skipif(not {"avx2", "avx512f"} <= _cpu_flags(), reason="needs a CPU with both AVX2 and AVX-512")
def test_the_seeded_head_is_the_same_under_avx2_and_avx512_kernels(checkpoints, tmp_path):
    """Restoring a reproduction's evidence on another machine needs the init bytes it recorded. torch
    draws normal(0, std) with a vectorised kernel on x86 with AVX2 or AVX-512, and the two agree, so an
    init is the same on any such CPU (docs/reproducibility.md; the scalar kernel, e.g. on ARM, differs)."""
    import hashlib
    import os
    import subprocess
    import sys

    code = ("import sys, torch; from lnpeft.model.init import InitConfig, make_init; "
            "print(torch.backends.cpu.get_cpu_capability()); "
            "make_init(InitConfig(sys.argv[1], 'rte', 0, sys.argv[2]))")
    digests = {}
    for capability in ("avx2", "avx512"):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "HF_HUB_OFFLINE": "1"}
        out = tmp_path / capability
        proc = subprocess.run([sys.executable, "-c", code, str(checkpoints["pooled"]), str(out)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split()[0] == capability.upper()  # the kernel set asked for is the one used
        digests[capability] = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert digests["avx2"] == digests["avx512"]
