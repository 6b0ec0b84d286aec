"""The GPU recipe (lnpeft.train.recipe: bf16 autocast, fused AdamW) run on CPU, alone and packed, agrees
with exact fp32 within bf16's tolerance; `auto` keeps fp32 on CPU."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_finetune import make_init, make_split

from lnpeft.train import finetune as ft
from lnpeft.train.recipe import resolve

BF16_RTOL = 1e-3
"""Epoch losses of the two recipes on the toy model: measured 2e-5 to 1e-4 apart (bf16 keeps 8 bits
of mantissa, but these losses sit near ln 2, where the loss is flat in the logits); 1e-3 leaves room
for another CPU's rounding."""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("recipe")
    return {"init": make_init(d / "init"), "train": make_split(d / "train.parquet", 192, seed=1),
            "dev": make_split(d / "validation.parquet", 64, seed=2)}


def cfg(toy, out, method="layernorm", recipe="fp32", lr=1e-3):
    return ft.FinetuneConfig(init=toy["init"], train=toy["train"], dev=(toy["dev"],), out=out, task="sst2",
                             method=method, lr=lr, seed=0, epochs=2, batch_size=16, max_length=32,
                             compile="false", threads=1, recipe=recipe)


def test_auto_is_fp32_on_cpu_and_gpu_on_cuda():
    assert resolve("auto", torch.device("cpu")) == resolve("fp32", torch.device("cpu"))
    gpu = resolve("auto", torch.device("cuda"))
    assert (gpu.name, gpu.bf16, gpu.fused_adamw, gpu.pin_memory) == ("gpu", True, True, True)
    on_cpu = resolve("gpu", torch.device("cpu"))
    assert (on_cpu.bf16, on_cpu.fused_adamw, on_cpu.pin_memory) == (True, True, False)
    with pytest.raises(ValueError, match="--recipe must be one of auto, fp32, bf16, gpu"):
        resolve("fp16", torch.device("cpu"))


def test_gpu_recipe_on_cpu_alone_and_packed_agrees_with_fp32(toy, tmp_path, monkeypatch):
    fused = []
    original = torch.optim.AdamW.__init__

    def record(self, *args, **kwargs):
        fused.append(kwargs.get("fused"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", record)
    exact = ft.finetune(cfg(toy, tmp_path / "fp32"))
    bf16 = ft.finetune(cfg(toy, tmp_path / "gpu", recipe="gpu"))
    runs = ft.finetune_pack([cfg(toy, tmp_path / "pack-ln", recipe="gpu"),
                             cfg(toy, tmp_path / "pack-bitfit", method="bitfit", recipe="gpu")])
    alone_bitfit = ft.finetune(cfg(toy, tmp_path / "bitfit", method="bitfit"))
    assert fused == [False, True, True, True, False]  # the gpu recipe's AdamW is the fused kernel
    packed = pd.DataFrame(runs[0].rows)
    # the bf16 branch really ran: not the fp32 numbers bit for bit ...
    assert not exact["train_loss"].equals(bf16["train_loss"])
    # ... and within bf16's tolerance of them, alone and packed
    for got in (bf16, packed):
        pd.testing.assert_series_equal(got["train_loss"], exact["train_loss"], rtol=BF16_RTOL)
    pd.testing.assert_series_equal(pd.DataFrame(runs[1].rows)["train_loss"], alone_bitfit["train_loss"],
                                   rtol=BF16_RTOL)


def test_bf16_where_native_else_fp32_and_said(monkeypatch):
    from lnpeft.train import recipe

    monkeypatch.setattr(recipe, "native_bf16", lambda: True)
    native = resolve("bf16", torch.device("cpu"))
    assert (native.name, native.bf16, native.fused_adamw, native.pin_memory) == ("bf16", True, False, False)
    assert resolve("bf16", torch.device("cuda")).fused_adamw  # CUDA: the fused optimizer as in `gpu`
    monkeypatch.setattr(recipe, "native_bf16", lambda: False)
    emulated = resolve("bf16", torch.device("cpu"))  # autocast would emulate bf16, slower than fp32
    assert (emulated.name, emulated.bf16) == ("fp32 (bf16 asked; this CPU has no native bf16)", False)


def test_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    from lnpeft.train import recipe

    for flags, native in (("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(recipe, "Path", lambda p, info=info: info if p == "/proc/cpuinfo" else p)
        recipe.native_bf16.cache_clear()
        assert recipe.native_bf16() is native, flags
    recipe.native_bf16.cache_clear()


def test_a_bf16_run_is_the_same_run_to_run_and_recorded(toy, tmp_path, monkeypatch):
    """Deterministic on one machine (forced to the native path, whatever this CPU has: autocast
    emulates it elsewhere), recorded in run.json, and within bf16's tolerance of fp32."""
    import json

    from lnpeft.train import recipe

    monkeypatch.setattr(recipe, "native_bf16", lambda: True)
    a = ft.finetune(cfg(toy, tmp_path / "a", recipe="bf16"))
    b = ft.finetune(cfg(toy, tmp_path / "b", recipe="bf16"))
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"), check_exact=True)
    assert (tmp_path / "a" / "predictions.parquet").read_bytes() == (tmp_path / "b" / "predictions.parquet").read_bytes()
    assert json.loads((tmp_path / "a" / "run.json").read_text())["recipe"] == "bf16"
    exact = ft.finetune(cfg(toy, tmp_path / "fp32"))
    pd.testing.assert_frame_equal(a[["train_loss"]], exact[["train_loss"]], rtol=BF16_RTOL)
