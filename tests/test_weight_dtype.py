"""Frozen weights in bf16, trained tensors in fp32 (lnpeft.model.weight_dtype, `lnpeft finetune --dtype`).

Tiny random-config Llama, Qwen2, GPT-2 and BERT models saved and loaded back in bf16 as `lnpeft
finetune` loads an init, with the tensors of every method set up by `make_runs`: the dtype of each
parameter against an oracle written here (the method's names from `methods.select`, norms by class
name), one optimizer step against a snapshot (only trained entries move, every gradient finite),
logits and loss against the fp32 model under the same autocast, and parameter bytes counted. Every
run here uses the `gpu` recipe: bf16 autocast on any CPU, with or without native bf16.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_architectures import tiny
from test_finetune import make_init, make_split
from transformers import AutoConfig, AutoModelForSequenceClassification

from lnpeft.data.artifacts import write_parquet
from lnpeft.data.batching import model_inputs
from lnpeft.model.methods import MethodOptions, select
from lnpeft.model.weight_dtype import check_autocast, hold, parameter_bytes
from lnpeft.train import finetune as ft
from lnpeft.train.packing import batch_rows, replicate
from lnpeft.train.recipe import resolve

CPU = torch.device("cpu")
FAMILIES = ("llama", "qwen2", "gpt2", "bert")
METHODS = ("layernorm", "bitfit", "random", "fisher")
BIAS_FREE = ("llama",)  # BitFit selects nothing there (refused at start)
CASES = [(f, m) for f in FAMILIES for m in METHODS if not (m == "bitfit" and f in BIAS_FREE)]
B = 4
LOGIT_TOL, LOSS_TOL = 0.06, 0.02
"""bf16-weights model against the fp32 model, both under bf16 autocast: the largest logit difference
over the largest |logit|, and the cross-entropy difference. Measured on these tiny models (weights
drawn with std 0.3) over 5 seeds: at most 0.039 and 0.009; bf16 autocast alone (fp32 weights, against
exact fp32) differs by up to 0.049 and 0.010, so bf16 storage costs no more than bf16 compute does."""


def is_norm(module: torch.nn.Module) -> bool:
    """Written out here, apart from lnpeft.model.norms: nn.LayerNorm and the families' RMSNorms."""
    return type(module).__name__ in ("LayerNorm", "LlamaRMSNorm", "Qwen2RMSNorm")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Each family's tiny model saved as an init's model is (fp32), with a Fisher ranking of its
    output LayerNorm entries (any order serves)."""
    out = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family)
        model = tiny(family)
        model.save_pretrained(folder)
        names = [n for n in select(model, "layernorm").whole if not n.startswith(("score.", "classifier."))]
        params = dict(model.named_parameters())
        entries = [(n, i) for n in names for i in range(params[n].numel())]
        order = np.random.default_rng(1).permutation(len(entries))
        write_parquet(pd.DataFrame({
            "param": [entries[j][0] for j in order], "layer": np.zeros(len(order), dtype=np.int64), "kind": "output",
            "index": np.array([entries[j][1] for j in order], dtype=np.int64), "score": np.linspace(1, 0, len(order)),
            "rank": np.arange(len(order), dtype=np.int64)}), folder / "mask.parquet", "masks")
        out[family] = folder
    return out


def run_config(folder: Path, method: str, out: Path, dtype: str = "bfloat16") -> ft.FinetuneConfig:
    fisher = dict(mask=folder / "mask.parquet", fraction=0.3) if method == "fisher" else {}
    return ft.FinetuneConfig(init=folder, train=folder / "train.parquet", dev=(folder / "dev.parquet",), out=out,
                             task="sst2", method=method, lr=1e-2, seed=0, recipe="gpu", dtype=dtype, **fisher)


def load(folder: Path, dtype: torch.dtype = torch.bfloat16):
    """As `ft.load_init` loads an init (without its tokenizer)."""
    return AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype).train()


def batch(family: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (B, 10), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, 7:], mask[1, 7:] = 0, 0  # one padded row (right padding)
    out = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 0, 1])}
    if family == "bert":
        out["token_type_ids"] = torch.zeros_like(ids)
    return out


def losses(model, data: dict, copies: int = 1) -> torch.Tensor:
    """Each member's loss, as the training loop computes it (bf16 autocast, fp32 loss)."""
    packed = replicate(data, copies)
    with torch.autocast("cpu", dtype=torch.bfloat16), batch_rows(copies * B):
        logits = model(**model_inputs(model, packed)).logits.reshape(copies, B, -1)
    return torch.stack([F.cross_entropy(logits[g].float(), data["labels"]) for g in range(copies)])


@pytest.mark.parametrize("family,method", CASES)
def test_frozen_weights_are_bf16_trained_tensors_fp32_and_one_step_moves_only_trained_entries(
        folders, tmp_path, family, method):
    torch.manual_seed(0)
    model = load(folders[family])
    (run,) = ft.make_runs(model, [run_config(folders[family], method, tmp_path / "run")], 4, CPU, resolve("gpu", CPU))
    trainable = run.trainable
    assert trainable.names  # the method trains something here
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        fp32 = name in trainable.whole or is_norm(modules[name.rsplit(".", 1)[0]])
        assert p.dtype == (torch.float32 if fp32 else torch.bfloat16), name
    assert all(p.dtype == torch.float32 for p in run.params.parameters())
    assert set(run.params.values) == set(trainable.partial)  # partly trained tensors: fp32 entries of their own

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses(model, batch(family)).sum().backward()
    grads = [p.grad for p in run.params.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable.whole)
    run.step()
    assert all(s.dtype == torch.float32 for state in run.optimizer.state.values() for s in state.values()
               if torch.is_tensor(s) and s.is_floating_point() and s.dim() > 0)
    masks = trainable.masks(model)
    moved = 0
    for name, p in model.named_parameters():
        changed = p.detach() != before[name]
        allowed = (torch.ones_like(changed) if name in trainable.whole
                   else masks.get(name, torch.zeros_like(changed)))
        assert not (changed & ~allowed).any(), f"{name}: an untrained entry moved"
        moved += int(changed.sum())
    assert moved > 0.5 * trainable.count(model)  # lr 1e-2 moves most trained entries past bf16's spacing


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_weights_give_the_fp32_models_logits_and_loss_within_bf16s_rounding(folders, tmp_path, family):
    """Same init, same autocast: the bf16-weights model's logits and loss against the fp32 model's
    (tolerances LOGIT_TOL, LOSS_TOL, measured)."""
    fp32 = load(folders[family], torch.float32).eval()
    bf16 = load(folders[family]).eval()
    ft.make_runs(bf16, [run_config(folders[family], "layernorm", tmp_path / "run")], 4, CPU, resolve("gpu", CPU))
    data = batch(family)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = fp32(**model_inputs(fp32, data)).logits.float()
        b = bf16(**model_inputs(bf16, data)).logits.float()
        la, lb = losses(fp32, data), losses(bf16, data)
    assert float((a - b).abs().max()) <= LOGIT_TOL * float(a.abs().max())
    assert abs(float(la - lb)) <= LOSS_TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_bytes_halve_but_for_the_fp32_tensors(folders, tmp_path, family):
    fp32 = load(folders[family], torch.float32)
    bf16 = load(folders[family])
    (run,) = ft.make_runs(bf16, [run_config(folders[family], "layernorm", tmp_path / "run")], 4, CPU,
                          resolve("gpu", CPU))
    modules = dict(bf16.named_modules())
    n = sum(p.numel() for p in fp32.parameters())
    kept = sum(p.numel() for name, p in bf16.named_parameters()
               if name in run.trainable.whole or is_norm(modules[name.rsplit(".", 1)[0]]))
    assert parameter_bytes(fp32) == 4 * n
    assert parameter_bytes(bf16) == 2 * n + 2 * kept
    assert parameter_bytes(bf16) < 0.55 * parameter_bytes(fp32)


def test_a_7b_llama_on_the_meta_device_holds_13_gb_instead_of_26():
    """Llama-2-7B's shape (AutoConfig's defaults), no weights allocated: 6.6e9 parameters, of which
    fp32 stay its 65 RMSNorms (2 x 32 layers + the final one, 4096 each) and the 2-label head."""
    config = AutoConfig.for_model("llama", num_labels=2, pad_token_id=0)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    n = sum(p.numel() for p in model.parameters())
    assert n == 32000 * 4096 + 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) + 4096 + 2 * 4096
    assert parameter_bytes(model) == 4 * n  # 26.4 GB
    hold(model, select(model, "layernorm").whole, "bfloat16")
    assert parameter_bytes(model) == 2 * n + 2 * (65 * 4096 + 2 * 4096)  # 13.2 GB


def test_float32_changes_nothing(folders):
    model = load(folders["gpt2"], torch.float32)
    before = {n: (p, p.data_ptr()) for n, p in model.named_parameters()}
    hold(model, select(model, "layernorm").whole, "float32")
    assert all(p is before[n][0] and p.data_ptr() == before[n][1] for n, p in model.named_parameters())


def trained_losses(folder: Path, cfgs: list[ft.FinetuneConfig], family: str) -> tuple[torch.Tensor, dict, list]:
    """Each member's loss after one optimizer step of `cfgs` (a run alone, or a pack) over a bf16
    model without dropout (a member and its run alone then see the same network); also the model's
    parameters before the step, and the runs."""
    model = load(folder).eval()
    runs = ft.make_runs(model, cfgs, 4, CPU, resolve("gpu", CPU))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses(model, batch(family), copies=len(cfgs)).sum().backward()
    for r in runs:
        assert all(p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in r.params.parameters())
        r.step()
    with torch.no_grad():
        return losses(model, batch(family), copies=len(cfgs)), before, (model, runs)


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_a_pack_shares_the_bf16_model_and_each_member_steps_as_its_run_alone(folders, tmp_path, family):
    """A pack of layernorm, random and a Fisher subset over one bf16 model: members' tensors fp32,
    the shared model never moves, and after one step each member's loss is its run alone's after
    its step (within LOSS_TOL; measured: at most 0.005)."""
    cfgs = [run_config(folders[family], m, tmp_path / m) for m in ("layernorm", "random", "fisher")]
    packed, before, (model, _) = trained_losses(folders[family], cfgs, family)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    for g, cfg in enumerate(cfgs):
        alone = trained_losses(folders[family], [cfg], family)[0]
        assert abs(float(packed[g]) - float(alone[0])) <= LOSS_TOL, cfg.method
    assert len({round(float(x), 4) for x in packed}) == len(cfgs)  # the members trained apart


def test_full_fine_tuning_and_a_run_without_autocast_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"--dtype bfloat16 holds the frozen weights in bfloat16, but --method "
                                         r"full trains every weight; run full fine-tuning \(and drift\) with "
                                         r"--dtype float32"):
        run_config(tmp_path, "full", tmp_path / "run")
    run_config(tmp_path, "full", tmp_path / "run", dtype="float32")  # fine
    with pytest.raises(ValueError, match=r"--dtype bfloat16 needs bf16 autocast, but the recipe here is 'fp32'; "
                                         r"use --recipe gpu"):
        check_autocast("bfloat16", resolve("fp32", CPU).bf16, "fp32")
    check_autocast("float32", False, "fp32")  # fine


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    return {"init": make_init(d / "init"), "train": make_split(d / "train.parquet", 64, seed=1),
            "dev": make_split(d / "validation.parquet", 32, seed=2)}


def cli(toy, command: str, *args: str) -> int:
    from lnpeft.cli import main

    return main([command, *args, "--init", str(toy["init"]), "--train", str(toy["train"]), "--dev", str(toy["dev"]),
                 "--task", "sst2", "--seed", "0", "--epochs", "1", "--batch-size", "16", "--threads", "1",
                 "--recipe", "gpu"])


def test_cli_takes_dtype_and_writes_it_with_fp32_state(toy, tmp_path, capsys):
    """`lnpeft finetune --dtype bfloat16`: run.json says so and counts the bytes held; state.safetensors
    holds fp32 values; `lnpeft finetune-pack` shares the option among its members."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert cli(toy, "finetune", "--method", "layernorm", "--lr", "1e-3", "--dtype", dtype, "--out", str(out)) == 0
        runs[dtype] = json.loads((out / "run.json").read_text())
        assert runs[dtype]["options"]["dtype"] == dtype
        assert all(t.dtype == torch.float32 for t in load_file(out / "state.safetensors").values())
    assert runs["bfloat16"]["parameter_bytes"] < 0.55 * runs["float32"]["parameter_bytes"]
    pack = tmp_path / "pack"
    assert cli(toy, "finetune-pack", "--dtype", "bfloat16", "--member", f"method=layernorm,lr=1e-3,out={pack}/ln",
               "--member", f"method=random,lr=1e-3,out={pack}/random") == 0
    for member in ("ln", "random"):
        info = json.loads((pack / member / "run.json").read_text())
        assert info["options"]["dtype"] == "bfloat16" and info["pack"] == 2
        assert all(t.dtype == torch.float32 for k, t in load_file(pack / member / "state.safetensors").items()
                   if not k.endswith("@indices"))
    # full fine-tuning is refused before anything is loaded or written, in one line
    assert cli(toy, "finetune", "--method", "full", "--lr", "1e-3", "--dtype", "bfloat16",
               "--out", str(tmp_path / "full")) == 2
    assert "error: --dtype bfloat16 holds the frozen weights in bfloat16, but --method full" in capsys.readouterr().err
    assert not (tmp_path / "full").exists()


def test_a_run_whose_recipe_is_fp32_is_refused_before_it_loads_anything(toy, tmp_path):
    cfg = ft.FinetuneConfig(init=toy["init"], train=toy["train"], dev=(toy["dev"],), out=tmp_path / "run", task="sst2",
                            method="layernorm", lr=1e-3, seed=0, recipe="fp32", dtype="bfloat16", threads=1)
    with pytest.raises(ValueError, match=r"--dtype bfloat16 needs bf16 autocast, but the recipe here is 'fp32'"):
        ft.finetune(cfg)
    assert not (tmp_path / "run").exists()
