"""The CUDA path of `lnpeft finetune` (bf16 autocast, fused AdamW, torch.compile with the
partial-tensor hooks, pinned memory) against exact fp32 on CPU. Needs a GPU: bench/gpu_check.sh
runs these on a lent machine (`pytest -m gpu`)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_finetune import make_init, make_split

from lnpeft.data.artifacts import read_parquet

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    return {"init": make_init(d / "init"), "train": make_split(d / "train.parquet", 512, seed=1),
            "dev": make_split(d / "validation.parquet", 128, seed=2)}


def _finetune(toy, out, method: str, cuda: bool, *extra: str) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0") if cuda else ""}
    cmd = [sys.executable, "-m", "lnpeft.cli", "finetune", "--init", str(toy["init"]), "--train", str(toy["train"]),
           "--dev", str(toy["dev"]), "--task", "sst2", "--method", method, "--lr", "1e-2", "--seed", "0",
           "--epochs", "3", "--batch-size", "16", "--max-length", "32", "--out", str(out), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("device cuda" in proc.stdout + proc.stderr) == cuda


@pytest.mark.parametrize("method", ["layernorm", "random", "bitfit"])
def test_gpu_recipe_agrees_with_fp32_cpu(toy, tmp_path, method):
    _finetune(toy, tmp_path / "gpu", method, cuda=True)
    _finetune(toy, tmp_path / "cpu", method, cuda=False)
    gpu, cpu = (read_parquet(tmp_path / d / "epochs.parquet", "epochs") for d in ("gpu", "cpu"))
    # bf16 autocast: losses within a few hundredths of fp32, the same learning curve
    np.testing.assert_allclose(gpu["train_loss"], cpu["train_loss"], atol=0.05)
    pg, pc = (read_parquet(tmp_path / d / "predictions.parquet", "predictions") for d in ("gpu", "cpu"))
    agree = (pg["prediction"].to_numpy() == pc["prediction"].to_numpy()).mean()
    assert agree >= 0.95, agree


@pytest.mark.parametrize("method", ["layernorm", "random"])
def test_bf16_weights_on_cuda_agree_with_fp32_cpu(toy, tmp_path, method):
    """`--dtype bfloat16` on CUDA (compiled, fused AdamW over fp32 tensors beside bf16 frozen weights;
    random writes its fp32 entries into bf16 tensors): the learning curve of the fp32 run on CPU."""
    _finetune(toy, tmp_path / "gpu", method, True, "--dtype", "bfloat16")
    _finetune(toy, tmp_path / "cpu", method, cuda=False)
    gpu, cpu = (read_parquet(tmp_path / d / "epochs.parquet", "epochs") for d in ("gpu", "cpu"))
    np.testing.assert_allclose(gpu["train_loss"], cpu["train_loss"], atol=0.05)
    pg, pc = (read_parquet(tmp_path / d / "predictions.parquet", "predictions") for d in ("gpu", "cpu"))
    assert (pg["prediction"].to_numpy() == pc["prediction"].to_numpy()).mean() >= 0.95


def test_packed_gpu_recipe_agrees_with_separate_fp32_cpu_runs(toy, tmp_path):
    """A pack on CUDA (compiled, bf16, fused AdamW, independent dropout) against each member's
    separate fp32 run on CPU: the learning curves within bf16's and dropout's noise."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")}
    members = [("layernorm", "1e-2"), ("bitfit", "1e-2"), ("random", "1e-2")]
    cmd = [sys.executable, "-m", "lnpeft.cli", "finetune-pack", "--init", str(toy["init"]), "--train",
           str(toy["train"]), "--dev", str(toy["dev"]), "--task", "sst2", "--seed", "0", "--epochs", "3",
           "--batch-size", "16", "--max-length", "32"]
    for method, lr in members:
        cmd += ["--member", f"method={method},lr={lr},out={tmp_path / 'pack' / method}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device cuda, in a pack of 3" in proc.stdout + proc.stderr
    for method, _ in members:
        _finetune(toy, tmp_path / "cpu" / method, method, cuda=False)
        gpu, cpu = (read_parquet(tmp_path / d / method / "epochs.parquet", "epochs") for d in ("pack", "cpu"))
        np.testing.assert_allclose(gpu["train_loss"], cpu["train_loss"], atol=0.05)
