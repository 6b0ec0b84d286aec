"""lnpeft finetune on tiny in-test BERTs: masking is exact, frozen tensors get no gradients,
a killed run resumes to the same epochs.parquet, a toy task is learned, NaN losses fail loudly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
)

from lnpeft.data.artifacts import read_parquet, write_parquet
from lnpeft.errors import NonFiniteOutputError
from lnpeft.train.machine import describe as describe_machine
from lnpeft.model.methods import MethodOptions, select
from lnpeft.model.state_file import load_state, save_safetensors
from lnpeft.train import finetune as ft

WORDS = ["good", "great", "fine", "nice", "bad", "awful", "poor", "sad",
         "the", "a", "movie", "film", "was", "is", "very", "quite", "plot", "story"]
POSITIVE, NEGATIVE = WORDS[:4], WORDS[4:8]
FILLER = WORDS[8:]


def make_init(path: Path, num_labels: int = 2, seed: int = 0, hidden: int = 32) -> Path:
    """A tiny BERT + word-level tokenizer saved like `lnpeft init` saves an init folder."""
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64,
                        num_labels=num_labels, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_split(path: Path, n: int, seed: int, labelled: bool = True) -> Path:
    """Separable sentiment toy data: the label is whether a positive word occurs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    texts = []
    for y in labels:
        words = list(rng.choice(FILLER, rng.integers(2, 9)))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POSITIVE if y else NEGATIVE)))
        texts.append(" ".join(words))
    df = pd.DataFrame({"idx": np.arange(n, dtype=np.int64), "text_a": texts, "text_b": None,
                       "label": pd.array(labels if labelled else [None] * n, dtype="Int64")})
    write_parquet(df, path, "data")
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    return {
        "init": make_init(d / "init"),
        "train": make_split(d / "train.parquet", 192, seed=1),
        "dev": make_split(d / "validation.parquet", 64, seed=2),
        "test": make_split(d / "test.parquet", 32, seed=3, labelled=False),
    }


def config(toy, out: Path, **kw) -> ft.FinetuneConfig:
    base = dict(init=toy["init"], train=toy["train"], dev=(toy["dev"],), test=(toy["test"],),
                out=out, task="sst2", method="layernorm", lr=1e-3, seed=0, epochs=2, batch_size=16,
                eval_batch_size=32, max_length=32, compile="false", threads=1)
    base.update(kw)
    return ft.FinetuneConfig(**base)


def test_toy_task_is_learned_and_outputs_are_complete(toy, tmp_path):
    epochs = ft.finetune(config(toy, tmp_path / "run", method="full", lr=3e-3, epochs=6))
    # chance is ~0.5 on balanced labels; a keyword task must be learned almost perfectly
    assert epochs["validation/accuracy"].max() >= 0.9
    assert list(epochs["epoch"]) == [1, 2, 3, 4, 5, 6]
    run = tmp_path / "run"
    assert not (run / "resume.pt").exists()
    read_parquet(run / "epochs.parquet", "epochs")
    preds = read_parquet(run / "predictions.parquet", "predictions")
    assert preds.groupby("split").size().to_dict() == {"validation": 64, "test": 32}
    # predictions are the best epoch's: recompute its dev accuracy from them
    dev = read_parquet(toy["dev"], "data").merge(preds[preds.split == "validation"], on="idx")
    best = epochs.loc[epochs["validation/accuracy"].idxmax()]
    assert (dev["label"] == dev["prediction"]).mean() == pytest.approx(best["validation/accuracy"])
    meta = json.loads((run / "run.json").read_text())
    assert meta["best_epoch"] == int(best["epoch"]) and meta["options"]["method"] == "full"
    assert meta["machine"] == describe_machine(torch.device("cpu")) and str(os.cpu_count()) in meta["machine"]  # where it ran
    # tokens counted without padding; padded tokens include it
    assert (epochs["tokens"] < epochs["padded_tokens"]).all()
    # full stores every tensor of the model
    model = AutoModelForSequenceClassification.from_pretrained(toy["init"])
    assert set(load_file(run / "state.safetensors")) == set(model.state_dict())


def _entries_changed(init: Path, state_path: Path):
    """Load init, apply the saved state, compare every parameter entry with init."""
    before = AutoModelForSequenceClassification.from_pretrained(init)
    after = AutoModelForSequenceClassification.from_pretrained(init)
    load_state(after, state_path)
    changed = {n: (p != dict(after.named_parameters())[n]) for n, p in before.named_parameters()}
    return before, changed


def test_masked_random_run_leaves_untrained_entries_bit_identical(toy, tmp_path):
    run = tmp_path / "run"
    # weight decay > 0 shrinks what the optimizer steps: only the trained entries may move
    ft.finetune(config(toy, run, method="random", weight_decay=0.5, lr=1e-2, epochs=2))
    model = AutoModelForSequenceClassification.from_pretrained(toy["init"])
    trainable = select(model, "random", MethodOptions(seed=0))
    assert trainable.partial, "the random control should train parts of tensors"
    # the saved state holds exactly the trained entries: partial tensors as indices + values
    state = load_file(run / "state.safetensors")
    assert {k for k in state if not k.startswith("classifier.")} == {
        f"{n}@{s}" for n in trainable.partial for s in ("indices", "values")} | {
        n for n in trainable.whole if not n.startswith("classifier.")}
    # full final model: reload via --save-model to see every entry, not just the saved ones
    run2 = tmp_path / "run2"
    ft.finetune(config(toy, run2, method="random", weight_decay=0.5, lr=1e-2, epochs=2,
                       save_model=tmp_path / "final"))
    final = dict(AutoModelForSequenceClassification.from_pretrained(tmp_path / "final").named_parameters())
    masks = trainable.masks(model)
    moved = 0
    for name, p in model.named_parameters():
        if name in masks:
            assert torch.equal(final[name][~masks[name]], p[~masks[name]]), name
            moved += int((final[name][masks[name]] != p[masks[name]]).sum())
        elif name not in trainable.whole:
            assert torch.equal(final[name], p), name
    assert moved > 0.9 * sum(int(m.sum()) for m in masks.values())
    # same seed -> identical epochs (timing aside)
    a = read_parquet(run / "epochs.parquet", "epochs").drop(columns="seconds")
    b = read_parquet(run2 / "epochs.parquet", "epochs").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)


def test_layernorm_state_holds_only_trained_tensors(toy, tmp_path):
    run = tmp_path / "run"
    ft.finetune(config(toy, run, method="layernorm", epochs=1))
    state = load_file(run / "state.safetensors")
    assert sorted(state) == sorted(
        [f"bert.encoder.layer.{i}.output.LayerNorm.{k}" for i in range(2) for k in ("weight", "bias")]
        + ["classifier.weight", "classifier.bias"])
    before, changed = _entries_changed(toy["init"], run / "state.safetensors")
    assert all(changed[n].all() for n in state)


def test_frozen_tensors_get_no_grad(toy, tmp_path, monkeypatch):
    """Check the grads the optimizer sees at its first step: only trained tensors have .grad."""
    seen = {}
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        if not seen:
            for group in self.param_groups:
                seen["opt"] = {id(p) for p in group["params"]}
            seen["model"] = captured["model"]
            seen["grads"] = {n: (p.grad is not None, p.requires_grad)
                             for n, p in captured["model"].named_parameters()}
        return original(self, *args, **kwargs)

    captured = {}
    orig_select = ft.select

    def capture_select(model, *a, **k):
        captured["model"] = model
        return orig_select(model, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    monkeypatch.setattr(ft, "select", capture_select)
    ft.finetune(config(toy, tmp_path / "run", method="bitfit", epochs=1))
    grads = seen["grads"]
    with_grad = {n for n, (g, _) in grads.items() if g}
    assert with_grad == {n for n, (_, r) in grads.items() if r}
    assert with_grad == {n for n in grads if n.endswith(".bias") or n.startswith("classifier.")}
    assert len(seen["opt"]) == len(with_grad)


@pytest.mark.parametrize("method,lr", [("full", 3e-3), ("random", 1e-9)])
def test_resume_after_kill_mid_epoch_gives_identical_epochs(toy, tmp_path, monkeypatch, method, lr):
    """A learning run (best epoch after the kill) and a flat one (lr 1e-9: best epoch 1, before
    the kill, so its files must come back from the checkpoint after Snakemake deleted them)."""
    kw = dict(method=method, weight_decay=0.1, epochs=3, lr=lr, batch_size=8)
    reference = ft.finetune(config(toy, tmp_path / "ref", **kw))
    best_epoch = json.loads((tmp_path / "ref" / "run.json").read_text())["best_epoch"]
    assert best_epoch == 1 if lr < 1e-6 else best_epoch > 1

    # interrupt in the middle of epoch 2 (24 steps per epoch): after epoch 1's checkpoint
    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 24 + 5:
            raise KeyboardInterrupt("simulated kill")
        return original(self, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(config(toy, run, **kw))
    assert (run / "resume.pt").exists() and not (run / "epochs.parquet").exists()
    assert sorted(p.name for p in run.iterdir()) == ["resume.pt"]  # files are written at the end only
    monkeypatch.setattr(torch.optim.AdamW, "step", original)
    resumed = ft.finetune(config(toy, run, **kw))
    assert not (run / "resume.pt").exists()
    pd.testing.assert_frame_equal(reference.drop(columns="seconds"), resumed.drop(columns="seconds"))
    ref_state, new_state = load_file(tmp_path / "ref" / "state.safetensors"), load_file(run / "state.safetensors")
    assert ref_state.keys() == new_state.keys()
    assert all(torch.equal(ref_state[k], new_state[k]) for k in ref_state)
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "ref" / "predictions.parquet", "predictions"),
                                  read_parquet(run / "predictions.parquet", "predictions"))

    def cut_off(name: str) -> Path:
        """A run of `kw` killed in epoch 2, as above: its folder, holding resume.pt."""
        monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
        calls["n"] = 0
        with pytest.raises(KeyboardInterrupt):
            ft.finetune(config(toy, tmp_path / name, **kw))
        monkeypatch.setattr(torch.optim.AdamW, "step", original)
        return tmp_path / name

    # a checkpoint from different options is refused, not silently mixed
    cut_off("other")
    with pytest.raises(ValueError, match=r"other options \(lr\)"):
        ft.finetune(config(toy, tmp_path / "other", **{**kw, "lr": 1e-3}))
    # ... but the thread count is an execution choice (Snakemake's cores), so that run resumes
    again = ft.finetune(config(toy, tmp_path / "other", **{**kw, "threads": 2}))
    assert list(again["epoch"]) == [1, 2, 3]
    pd.testing.assert_frame_equal(reference.drop(columns="seconds").iloc[:1], again.drop(columns="seconds").iloc[:1])
    # a checkpoint of an older version, without an option added since (recipe), resumes when the
    # option is at its default, and is refused when it is not
    cut_off("older")
    ckpt = torch.load(tmp_path / "older" / "resume.pt", weights_only=False)
    assert ckpt["config"].pop("recipe") == "auto"
    torch.save(ckpt, tmp_path / "older" / "resume.pt")
    with pytest.raises(ValueError, match=r"other options \(recipe\)"):
        ft.finetune(config(toy, tmp_path / "older", **{**kw, "recipe": "gpu"}))
    older = ft.finetune(config(toy, tmp_path / "older", **kw))
    pd.testing.assert_frame_equal(reference.drop(columns="seconds"), older.drop(columns="seconds"))
    # save_state picks the files written at the end, not what is trained: a checkpoint from before
    # the option existed (a grid switched to save_state: false between sittings) resumes without it
    cut_off("stateless")
    ckpt = torch.load(tmp_path / "stateless" / "resume.pt", weights_only=False)
    assert ckpt["config"].pop("save_state") is True
    torch.save(ckpt, tmp_path / "stateless" / "resume.pt")
    stateless = ft.finetune(config(toy, tmp_path / "stateless", **{**kw, "save_state": False}))
    pd.testing.assert_frame_equal(reference.drop(columns="seconds"), stateless.drop(columns="seconds"))
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "ref" / "predictions.parquet", "predictions"),
                                  read_parquet(tmp_path / "stateless" / "predictions.parquet", "predictions"))
    assert not (tmp_path / "stateless" / "state.safetensors").exists()
    assert not (tmp_path / "stateless" / "resume.pt").exists()


def test_nan_loss_names_run_and_step(toy, tmp_path):
    with pytest.raises(ft.NonFiniteLossError, match=r"sst2/full/lr1e\+06_seed0.*epoch 1, step \d+"):
        ft.finetune(config(toy, tmp_path / "run", method="full", lr=1e6, max_grad_norm=0, epochs=1))


def test_regression_and_two_dev_splits(tmp_path):
    """STS-B-like regression (1 output, MSE) and MNLI-like two dev splits with named columns."""
    init = make_init(tmp_path / "init", num_labels=1)
    train = make_split(tmp_path / "train.parquet", 64, seed=1)
    df = read_parquet(train, "data")
    df["label"] = df["label"].astype("float64") * 5.0
    write_parquet(df, train, "data")
    dev = tmp_path / "validation.parquet"
    write_parquet(df.iloc[:32], dev, "data")
    epochs = ft.finetune(ft.FinetuneConfig(init=init, train=train, dev=(dev,), out=tmp_path / "run",
                                           task="stsb", method="bitfit", lr=1e-3, seed=0, epochs=1,
                                           batch_size=16, compile="false"))
    assert {"validation/spearman", "validation/pearson"} <= set(epochs.columns)

    init3 = make_init(tmp_path / "init3", num_labels=3)
    m = tmp_path / "validation_matched.parquet"
    mm = tmp_path / "validation_mismatched.parquet"
    make_split(m, 16, seed=5)
    make_split(mm, 16, seed=6)
    train3 = make_split(tmp_path / "t3.parquet", 32, seed=7)
    epochs = ft.finetune(ft.FinetuneConfig(init=init3, train=train3,
                                           dev=(m, mm), out=tmp_path / "run3", task="mnli", method="layernorm",
                                           lr=1e-3, seed=0, epochs=1, batch_size=16, compile="false"))
    assert {"validation_matched/accuracy", "validation_mismatched/accuracy"} <= set(epochs.columns)
    with pytest.raises(ValueError, match="labels"):
        ft.finetune(ft.FinetuneConfig(init=init3, train=train, dev=(dev,), out=tmp_path / "bad",
                                      task="sst2", method="full", lr=1e-3, seed=0, compile="false"))


def test_cli_writes_outputs(toy, tmp_path):
    from lnpeft.cli import main

    out = tmp_path / "run"
    rc = main(["finetune", "--init", str(toy["init"]), "--train", str(toy["train"]), "--dev", str(toy["dev"]),
               "--test", str(toy["test"]), "--task", "sst2", "--method", "layernorm", "--lr", "1e-3",
               "--seed", "0", "--out", str(out), "--epochs", "1", "--batch-size", "32", "--threads", "1"])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"epochs.parquet", "predictions.parquet", "state.safetensors", "run.json"}
    assert main(["finetune", "--init", str(toy["init"]), "--train", str(toy["train"]), "--dev", str(toy["dev"]),
                 "--task", "sst2", "--method", "fisher", "--lr", "1e-3", "--seed", "0", "--out", str(out)]) == 2


def test_no_state_writes_the_same_run_without_its_weights(toy, tmp_path):
    """--no-state (training.save_state: false): the same epochs and predictions, run.json says so, no
    state.safetensors; a pack collects three files; export names the cause."""
    from lnpeft.cli import main
    from lnpeft.errors import LnpeftError
    from lnpeft.model.export import _run_meta
    from lnpeft.train.collect_run import collect

    args = ["finetune", "--init", str(toy["init"]), "--train", str(toy["train"]), "--dev", str(toy["dev"]),
            "--task", "sst2", "--method", "layernorm", "--lr", "1e-3", "--seed", "0", "--epochs", "1", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "with")]) == 0
    assert main([*args, "--out", str(tmp_path / "without"), "--no-state"]) == 0
    assert {p.name for p in (tmp_path / "without").iterdir()} == {"epochs.parquet", "predictions.parquet", "run.json"}
    for name in ("epochs.parquet", "predictions.parquet"):
        a, b = pd.read_parquet(tmp_path / "with" / name), pd.read_parquet(tmp_path / "without" / name)
        pd.testing.assert_frame_equal(a.drop(columns="seconds", errors="ignore"), b.drop(columns="seconds", errors="ignore"))
    assert json.loads((tmp_path / "without" / "run.json").read_text())["options"]["save_state"] is False
    out = tmp_path / "collected"
    out.mkdir()
    (out / "state.safetensors").write_bytes(b"an earlier run's")
    collect(tmp_path / "without", out)
    assert sorted(p.name for p in out.iterdir()) == ["epochs.parquet", "predictions.parquet", "run.json"]
    with pytest.raises(LnpeftError, match=r"state.safetensors: missing; its run.json says it saved none"):
        _run_meta(tmp_path / "without")


@pytest.mark.parametrize("stored,message", [
    ({"format": 1}, r"resume\.pt: checkpoint written by another lnpeft version \(format 1, this one reads 2\); "
                    r"delete it to start the run over"),
    ({"format": ft.RESUME_FORMAT, "lr": 0.5}, r"resume\.pt: checkpoint of a run with other options \(lr\); "
                                              r"delete it to start over"),
])
def test_resume_refuses_a_foreign_checkpoint(toy, tmp_path, stored, message):
    cfg = config(toy, tmp_path / "run")
    (tmp_path / "run").mkdir()
    options = cfg.to_json() | {k: v for k, v in stored.items() if k != "format"}
    torch.save({"format": stored["format"], "config": options}, tmp_path / "run" / "resume.pt")
    with pytest.raises(ValueError, match=message):
        ft.finetune(cfg)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["resume.pt"]  # nothing lost


def _save_file_on_a_full_disk(tensors, filename, metadata=None):
    """safetensors' save_file as it fails on a full disk (seen on a 64 KiB tmpfs): part of the
    file written, then its SafetensorError carrying the OS text."""
    from safetensors import SafetensorError
    from safetensors.torch import save

    data = save(tensors, metadata)
    with open(filename, "wb") as fh:
        fh.write(data[: len(data) // 2])
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("kind", ["resume.pt", "state.safetensors"])
def test_full_disk_mid_save_keeps_the_previous_file(tmp_path, full_disk, monkeypatch, kind):
    from lnpeft.errors import DiskFullError

    path = tmp_path / "run" / kind
    state = {"w": torch.arange(2000, dtype=torch.float32)}
    save = (lambda s: ft.save_resume({"params": s, "epoch": 1}, path)) if kind == "resume.pt" else \
        (lambda s: save_safetensors(s, path))
    save(state)
    before = path.read_bytes()
    if kind == "resume.pt":
        full_disk.fill_after(3000)  # torch.save writes through the file: the disk fills inside it
    else:
        monkeypatch.setattr("safetensors.torch.save_file", _save_file_on_a_full_disk)
    with pytest.raises(DiskFullError) as err:
        save({"w": state["w"] * 2})
    assert str(err.value) == (f"{path}: no space left on device while writing; "
                              f"free space (df -h {path.parent}) and rerun")
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [kind]
    if kind == "resume.pt":
        [(partial, size)] = full_disk.partial
        assert partial.name.startswith(".resume.pt.") and size > 0
        assert torch.load(path)["epoch"] == 1


def test_finetune_on_a_full_disk_is_one_line_and_leaves_no_temporary_file(toy, tmp_path, full_disk, capsys):
    from lnpeft.cli import main

    out = tmp_path / "run"
    full_disk.fill_after(0)
    rc = main(["finetune", "--init", str(toy["init"]), "--train", str(toy["train"]), "--dev", str(toy["dev"]),
               "--task", "sst2", "--method", "layernorm", "--lr", "1e-3", "--seed", "0", "--out", str(out),
               "--epochs", "1", "--batch-size", "32", "--threads", "1"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2
    # the first file a run writes is its epoch checkpoint (its outputs come at the end)
    assert err[-1] == (f"lnpeft finetune: error: {out / 'resume.pt'}: no space left on device "
                       f"while writing; free space (df -h {out}) and rerun")
    assert list(out.iterdir()) == []  # no temporary file, no output


def test_resume_compares_the_recipe_auto_resolved_to(toy, tmp_path, monkeypatch):
    """`--recipe auto` is bf16 autocast on a GPU and fp32 on a CPU: a run checkpointed on a GPU must
    not silently resume in fp32 on a CPU because both say `auto`."""
    kw = dict(method="layernorm", epochs=2, lr=1e-3, batch_size=8)
    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 24 + 2:  # in epoch 2, after epoch 1's checkpoint
            raise KeyboardInterrupt("simulated kill")
        return original(self, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(config(toy, run, **kw))
    monkeypatch.setattr(torch.optim.AdamW, "step", original)
    ckpt = torch.load(run / "resume.pt", weights_only=False)
    assert ckpt["config"]["recipe"] == "auto" and ckpt["resolved_recipe"] == "fp32"
    # as a GPU run would have written it: auto resolved to the GPU recipe
    torch.save({**ckpt, "resolved_recipe": "gpu", "rng_cuda": torch.zeros(16, dtype=torch.uint8)}, run / "resume.pt")
    with pytest.raises(ValueError, match=r"resume\.pt: checkpoint trained with recipe 'gpu' \(on a GPU\), resumed "
                                         r"with 'fp32' here; .* pass --recipe gpu, or delete it to start over"):
        ft.finetune(config(toy, run, **kw))
    # a checkpoint written before the resolved recipe was stored: inferred from where it ran
    legacy = {k: v for k, v in ckpt.items() if k != "resolved_recipe"}
    torch.save({**legacy, "rng_cuda": torch.zeros(16, dtype=torch.uint8)}, run / "resume.pt")
    with pytest.raises(ValueError, match=r"checkpoint trained with recipe 'gpu'"):
        ft.finetune(config(toy, run, **kw))
    torch.save(legacy, run / "resume.pt")  # a CPU one: resumes
    assert list(ft.finetune(config(toy, run, **kw))["epoch"]) == [1, 2]


def test_nan_outputs_at_evaluation_fail_the_run_naming_it(toy, tmp_path, monkeypatch):
    """A model whose outputs turn NaN in evaluation (finite training loss) fails, naming the run and
    the epoch; before, argmax over NaN logits predicted class 0 and the run scored as a majority vote."""
    load = ft.load_init

    def nan_in_eval(cfg, num_labels, device):
        tokenizer, model = load(cfg, num_labels, device)
        model.classifier.register_forward_hook(lambda mod, args, out: out if mod.training else out * float("nan"))
        return tokenizer, model

    monkeypatch.setattr(ft, "load_init", nan_in_eval)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteOutputError, match=r"run sst2/layernorm/lr0\.001_seed0 \(.*run\): 64 of 64 validation "
                                                   r"predictions are NaN at epoch 1"):
        ft.finetune(config(toy, out, epochs=1))
    assert not (out / "epochs.parquet").exists() and not (out / "predictions.parquet").exists()
    monkeypatch.setattr(ft, "load_init", load)
    model = load(config(toy, out), 2, torch.device("cpu"))[1]
    model.classifier.register_forward_hook(lambda mod, args, out: out * float("nan"))
    from lnpeft.data.batching import load_split

    data = load_split(toy["dev"], load(config(toy, out), 2, torch.device("cpu"))[0], 32)
    assert np.isnan(ft.predict(model, data, 32, torch.device("cpu"), False, False)).all()  # not class 0
