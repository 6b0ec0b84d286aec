"""Partly trained tensors (lnpeft.model.partial_tensors) against their oracle: the dense masked update.

The oracle trains a partly trained tensor the obvious way: the whole tensor is trainable, its
gradient is zeroed outside the trained entries, AdamW steps over the whole tensor, and the
untrained entries are put back after each step. The engine must take the same steps.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from lnpeft.model.methods import MethodOptions, TrainableSet, select
from lnpeft.model.partial_tensors import PartialTensors
from lnpeft.train.packing import in_place
from lnpeft.train.run_state import make_optimizer

CPU = torch.device("cpu")


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():  # fresh LayerNorms are exactly 1 / 0: make every entry distinct
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def layernorm_subset(model: nn.Module, per_tensor: int = 5) -> TrainableSet:
    """What a fisher mask gives: a few entries of each output LayerNorm tensor, plus the head."""
    gen = torch.Generator().manual_seed(1)
    partial = {n: torch.randperm(p.numel(), generator=gen)[:per_tensor].sort().values
               for n, p in model.named_parameters() if ".output.LayerNorm." in n and "attention" not in n}
    head = tuple(n for n, _ in model.named_parameters() if n.startswith("classifier."))
    return TrainableSet(head, partial)


class MaskedOracle:
    """The dense reference: whole tensors trainable, gradients masked, untrained entries restored."""

    def __init__(self, model: nn.Module, trainable: TrainableSet, lr: float, weight_decay: float) -> None:
        self.model = model
        names = set(trainable.names)
        for name, p in model.named_parameters():
            p.requires_grad_(name in names)
        self.params = dict(model.named_parameters())
        self.masks = trainable.masks(model)
        self.frozen = {n: self.params[n].detach()[~m].clone() for n, m in self.masks.items()}
        for name, mask in self.masks.items():
            self.params[name].register_hook(lambda g, m=mask: g * m)
        self.opt_params = [p for n, p in self.params.items() if n in names]
        self.optimizer = torch.optim.AdamW(self.opt_params, lr=lr, weight_decay=weight_decay)

    def step(self, batch: dict) -> float:
        loss = _loss(self.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.opt_params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, mask in self.masks.items():
                self.params[name][~mask] = self.frozen[name]
        return float(loss.detach())


class Engine:
    """lnpeft finetune's step: the trained entries as parameters of their own, synced after a step."""

    def __init__(self, model: nn.Module, trainable: TrainableSet, lr: float, weight_decay: float) -> None:
        self.model = model
        self.params = in_place(model, trainable)
        self.optimizer = make_optimizer(self.params.parameters(), lr, weight_decay, CPU)
        self.opt_params = self.params.parameters()

    def step(self, batch: dict) -> float:
        loss = _loss(self.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.opt_params, 1.0)
        self.optimizer.step()
        self.params.sync()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def _loss(model: nn.Module, batch: dict) -> torch.Tensor:
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return F.cross_entropy(logits, batch["labels"])


def _batches(n: int = 3) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    out = [{"input_ids": torch.randint(5, 1000, (4, 9), generator=gen),
            "token_type_ids": torch.zeros(4, 9, dtype=torch.long),
            "attention_mask": torch.ones(4, 9, dtype=torch.long),
            "labels": torch.tensor([0, 1, 1, 0])} for _ in range(n)]
    out[0]["attention_mask"][1, 6:] = 0  # padding present
    return out


def _trainable(model: nn.Module, kind: str) -> TrainableSet:
    return select(model, "random", MethodOptions(seed=3)) if kind == "random" else layernorm_subset(model)


@pytest.mark.parametrize("kind", ["random", "layernorm-subset"])
def test_entry_gradients_equal_masked_gradients(kind):
    base = tiny_bert()
    trainable = _trainable(base, kind)
    assert trainable.partial
    oracle = MaskedOracle(copy.deepcopy(base), trainable, 1e-2, 0.0)
    engine = Engine(copy.deepcopy(base), trainable, 1e-2, 0.0)
    batch = _batches(1)[0]
    _loss(oracle.model, batch).backward()
    _loss(engine.model, batch).backward()
    scale = max(float(oracle.params[n].grad.abs().max()) for n in trainable.partial)
    assert scale > 0
    for name, values in engine.params.values.items():
        dense = oracle.params[name].grad.reshape(-1)
        torch.testing.assert_close(values.grad, dense[trainable.partial[name]], rtol=1e-4, atol=1e-6 * scale)
        assert int((dense != 0).sum()) <= len(trainable.partial[name])  # the oracle really is masked
    # partly trained tensors get no dense gradient in the engine
    for name, p in engine.model.named_parameters():
        assert (p.grad is not None) == (name in trainable.whole), name


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
@pytest.mark.parametrize("kind", ["random", "layernorm-subset"])
def test_entry_steps_equal_masked_steps(kind, weight_decay):
    base = tiny_bert()
    trainable = _trainable(base, kind)
    oracle = MaskedOracle(copy.deepcopy(base), trainable, 1e-2, weight_decay)
    engine = Engine(copy.deepcopy(base), trainable, 1e-2, weight_decay)
    for batch in _batches(3):
        assert engine.step(batch) == pytest.approx(oracle.step(batch), rel=1e-4)
    original = dict(base.named_parameters())
    engine_params = dict(engine.model.named_parameters())
    moved = 0
    for name, idx in trainable.partial.items():
        # the engine's tensor equals the oracle's: trained entries up to rounding (Adam can amplify
        # the rounding of a ~0 gradient to a step of lr: 3 steps of 1e-2 bound it), untrained
        # entries bit-identical to the start in both
        reference = oracle.params[name].detach().reshape(-1)
        mine = engine_params[name].detach().reshape(-1)
        torch.testing.assert_close(mine[idx], reference[idx], rtol=0, atol=1e-3)
        assert torch.equal(mine[idx], engine.params.values[name].detach())
        moved += int((mine[idx] - original[name].reshape(-1)[idx]).abs().gt(1e-3).sum())
        untrained = torch.ones(reference.numel(), dtype=torch.bool)
        untrained[idx] = False
        assert torch.equal(mine[untrained], original[name].reshape(-1)[untrained])
        assert torch.equal(reference[untrained], original[name].reshape(-1)[untrained])
    assert moved > 0.5 * sum(len(i) for i in trainable.partial.values())
    for name in trainable.whole:
        torch.testing.assert_close(engine_params[name], oracle.params[name], rtol=0, atol=1e-3)


def test_entry_gradients_are_the_dense_gradients_at_those_entries():
    """Linear weight (repeated output rows), Linear bias, LayerNorm weight and bias: each trained
    value's gradient equals the dense gradient of its tensor at that entry, and the input's
    gradient is untouched by the hooks."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.LayerNorm(3), nn.Tanh(), nn.Linear(3, 2))
    with torch.no_grad():
        model[1].weight.add_(torch.randn(3))
        model[1].bias.add_(torch.randn(3))
    partial = {"0.weight": torch.tensor([0, 2, 4, 7, 14]),  # rows 0, 0, 0, 1, 2
               "0.bias": torch.tensor([1]), "1.weight": torch.tensor([0, 2]), "1.bias": torch.tensor([2])}
    dense = copy.deepcopy(model)
    model.requires_grad_(False)
    entries = PartialTensors(model, TrainableSet((), partial))
    x = torch.randn(2, 4, 5, requires_grad=True)
    x_dense = x.detach().clone().requires_grad_(True)
    model(x).square().sum().backward()
    dense(x_dense).square().sum().backward()
    for name, idx in partial.items():
        torch.testing.assert_close(entries.values[name].grad,
                                   dict(dense.named_parameters())[name].grad.reshape(-1)[idx],
                                   rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x_dense.grad)
    # no hooks work in no-grad mode, and sync_ writes the values (only) into the tensors
    with torch.no_grad():
        for v in entries.parameters():
            v.add_(1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    entries.sync_()
    for name, p in model.named_parameters():
        changed = (p.detach() != before[name]).reshape(-1).nonzero().reshape(-1)
        expected = partial.get(name, torch.empty(0, dtype=torch.long))
        assert torch.equal(changed, expected), name
        if name in partial:
            assert torch.equal(p.detach().reshape(-1)[partial[name]], entries.values[name].detach())
    entries.remove_hooks()
    assert not any(m._forward_hooks for m in model)


def _norm_and_linear(norm: str, linear: str) -> nn.Sequential:
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.pytorch_utils import Conv1D

    first = nn.Linear(5, 3) if linear == "Linear" else Conv1D(3, 5)  # Conv1D(nf=out, nx=in)
    make = {"LayerNorm": lambda: nn.LayerNorm(3), "RMSNorm": lambda: nn.RMSNorm(3),
            "LlamaRMSNorm": lambda: LlamaRMSNorm(3), "GemmaRMSNorm": lambda: GemmaRMSNorm(3)}
    return nn.Sequential(first, make[norm](), nn.Tanh(), nn.Linear(3, 2))


@pytest.mark.parametrize("norm,linear", [("RMSNorm", "Linear"), ("LlamaRMSNorm", "Conv1D"),
                                         ("GemmaRMSNorm", "Linear"), ("LayerNorm", "Conv1D")])
def test_entry_gradients_of_every_registered_norm_and_linear_class(norm, linear):
    """Each class of lnpeft.model.norms and lnpeft.model.linears: a trained value's gradient is
    the dense gradient of its tensor at that entry (Conv1D's weight is stored [in, out])."""
    torch.manual_seed(0)
    model = _norm_and_linear(norm, linear)
    with torch.no_grad():
        for p in model[1].parameters():
            p.add_(torch.randn_like(p))
    partial = {"0.weight": torch.tensor([0, 2, 4, 7, 14]), "0.bias": torch.tensor([1]), "1.weight": torch.tensor([0, 2])}
    if norm == "LayerNorm":
        partial["1.bias"] = torch.tensor([2])
    dense = copy.deepcopy(model)
    model.requires_grad_(False)
    entries = PartialTensors(model, TrainableSet((), partial))
    x = torch.randn(2, 4, 5)
    model(x).square().sum().backward()
    dense(x).square().sum().backward()
    for name, idx in partial.items():
        torch.testing.assert_close(entries.values[name].grad,
                                   dict(dense.named_parameters())[name].grad.reshape(-1)[idx], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text", "gpt2"])
def test_decoder_random_control_entry_gradients_are_the_dense_ones(family):
    """The random control on a decoder draws entries of RMSNorm (Gemma's 1 + w), nn.Linear and
    GPT-2's Conv1D ([in, out]) tensors: each trained value's gradient equals the dense gradient of
    its tensor at that entry (the classification read at the last token that is not padding)."""
    from test_architectures import tiny

    base = tiny(family)
    trainable = select(base, "random", MethodOptions(seed=3))
    kinds = {type(dict(base.named_modules())[n.rsplit(".", 1)[0]]).__name__ for n in trainable.partial}
    assert ("Conv1D" if family == "gpt2" else "Linear") in kinds
    dense = copy.deepcopy(base)
    model = copy.deepcopy(base)
    params = in_place(model, trainable)
    ids = torch.randint(5, 60, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 9, dtype=torch.long)
    ids[1, 6:], mask[1, 6:] = 0, 0  # padding (id 0 in the tiny configs)
    model(input_ids=ids, attention_mask=mask).logits.square().sum().backward()
    dense(input_ids=ids, attention_mask=mask).logits.square().sum().backward()
    dense_params = dict(dense.named_parameters())
    for name, values in params.values.items():
        full = dense_params[name].grad
        # float rounding against the tensor's largest gradient (a key bias's is ~0: softmax ignores it)
        torch.testing.assert_close(values.grad, full.reshape(-1)[trainable.partial[name]], rtol=1e-4,
                                   atol=1e-5 * float(full.abs().max()), msg=name)


def test_unsupported_tensors_are_refused():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    model.requires_grad_(False)
    with pytest.raises(TypeError, match=r"0\.weight: sub-tensor training supports the weights and biases of "
                       r"the linear layers .* not Embedding\.weight"):
        PartialTensors(model, TrainableSet((), {"0.weight": torch.tensor([1])}))
    model[1].weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"1\.weight: a partly trained tensor must be frozen"):
        PartialTensors(model, TrainableSet((), {"1.weight": torch.tensor([1])}))


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on CPU needs a C compiler")
def test_compiled_steps_equal_eager_steps_without_graph_breaks():
    """What finetune does on a GPU (torch.compile(dynamic=True)), here on the CPU backend:
    fullgraph=True fails on any graph break the hooks or their autograd.Function would cause."""
    base = tiny_bert()
    trainable = select(base, "random", MethodOptions(seed=3))
    results = []
    for compiled in (False, True):
        engine = Engine(copy.deepcopy(base), trainable, 1e-2, 0.1)
        if compiled:
            engine.model = torch.compile(engine.model, dynamic=True, fullgraph=True)
        losses = [engine.step(b) for b in _batches(3)]
        results.append((losses, {n: v.detach().clone() for n, v in engine.params.values.items()}))
    (eager_losses, eager_values), (comp_losses, comp_values) = results
    assert comp_losses == pytest.approx(eager_losses, rel=1e-5)
    for name, value in eager_values.items():
        torch.testing.assert_close(comp_values[name], value, rtol=1e-4, atol=1e-6)
