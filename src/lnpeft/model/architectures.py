"""Per-architecture parameter naming, keyed by `config.model_type`: a new family is a new row.

Everything that needs to know "which tensor is layer 7's output LayerNorm" asks this table, so
methods, drift, Fisher and masks agree on names. A tensor holds one or more *pieces* of the paper's
components: one for BERT's tensors, three row blocks for a fused query/key/value projection
(ModernBERT's `Wqkv`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, NamedTuple

import torch

COMPONENTS: tuple[str, ...] = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
)
"""The eight per-layer components of Table 1 and Figure 1, in forward order."""

QKV: tuple[str, ...] = COMPONENTS[:3]
"""Query, key and value: the components a fused attention projection holds, in order."""

LAYERNORM_COMPONENT = "output.LayerNorm"
"""The paper's "LayerNorm": each layer's output LayerNorm (not the attention-output one)."""

LAYERNORM_CHOICES: tuple[str, ...] = ("attention.output.LayerNorm", LAYERNORM_COMPONENT)
"""The components a LayerNorm set (config `model.layernorm`) may hold."""

LAYERNORM_CONFIG_KEY = "lnpeft_layernorm"
"""The key in an init folder's config.json that carries the chosen LayerNorm set to every stage."""


class Piece(NamedTuple):
    """One component's share of a tensor: block part/parts along `dim` (0/1: the whole tensor)."""

    layer: int
    component: str
    kind: str
    part: int = 0
    parts: int = 1
    dim: int = 0

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.parts == 1 else tensor.chunk(self.parts, dim=self.dim)[self.part]


@dataclass(frozen=True)
class Architecture:
    base: str
    """The base model's attribute inside the *ForSequenceClassification wrapper
    (`model.base_model_prefix`). Every parameter outside it is the task head (always trained):
    BERT's classifier, RoBERTa's and ELECTRA's two-layer classifier, DistilBERT's pre_classifier
    and classifier, DeBERTa's pooler and classifier, ModernBERT's head and classifier, the
    decoders' score."""
    layer_path: str = "encoder.layer"
    renames: tuple[tuple[str, str], ...] = ()
    """(paper component, this family's module path inside a layer) where the family's name differs
    from BERT's; everything downstream (drift, Fisher, Table 1, figures) speaks the paper's names.
    A component may have several modules (Llama's gate_proj and up_proj are both intermediate.dense)."""
    fused: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(module inside a layer, the paper components its weight's equal output blocks hold, in order)."""
    fused_dim: int = 0
    """The weight's output axis, along which `fused` blocks lie: 0 for nn.Linear ([out, in]), 1 for
    GPT-2's Conv1D ([in, out]); a bias's blocks lie along its only axis."""
    next_layer: tuple[tuple[str, str, str], ...] = ()
    """Pre-LN families: (paper component, module inside layer i+1 that plays its role for layer i,
    module under `base` that plays it for the last layer)."""
    bias_switches: tuple[tuple[str, bool], ...] = ()
    """(config.json key, its default) that give the encoder biases when true; empty: it always has
    biases. Lets the workflow refuse BitFit on a bias-free model at start, without loading it."""
    packable: bool = True
    """Whether parameter-efficient runs of this family can share a pack (`lnpeft.train.packing`):
    not when a trained module runs on a tensor the batch shares (DeBERTa's relative position
    embeddings), which a pack cannot split into its members' rows."""
    last_token: bool = False
    """Sequence classification reads the last token that is not padding (the decoders): the model
    needs a pad token id, which `lnpeft init` takes from the tokenizer (EOS if it has none)."""
    n_layers: int | None = None
    """Bound by `for_config`; needed only to place a `next_layer` component's last-layer module."""
    layernorm: tuple[str, ...] = (LAYERNORM_COMPONENT,)
    """The components the layernorm method, the random control's size and the Fisher subsets use;
    the paper's set by default, else the init folder's `model.layernorm` (`for_config`)."""

    @cached_property  # asked once per parameter name: built once per row
    def _layer_re(self) -> re.Pattern[str]:
        return re.compile(
            rf"^{re.escape(self.base)}\.{re.escape(self.layer_path)}\.(\d+)\.(.+)\.(weight|bias)$"
        )

    @cached_property
    def _to_paper(self) -> dict[str, str]:
        family: dict[str, list[str]] = {}
        for component, module in self.renames:
            family.setdefault(component, []).append(module)
        elsewhere = {c for _, cs in self.fused for c in cs} | {c for c, _, _ in self.next_layer}
        return {m: c for c in COMPONENTS if c not in elsewhere for m in family.get(c, [c])}

    def pieces(self, name: str) -> list[Piece]:
        """The component pieces a parameter holds ([] for embeddings, pooler, head):
        `bert.encoder.layer.3.output.LayerNorm.bias` -> [(3, 'output.LayerNorm', 'bias')];
        `model.layers.3.attn.Wqkv.weight` -> query, key and value of layer 3, a third each;
        `model.layers.3.attn_norm.weight` -> [(2, 'output.LayerNorm', 'weight')] (pre-LN)."""
        m = self._layer_re.match(name)
        if m:
            layer, module, kind = int(m.group(1)), m.group(2), m.group(3)
            if module in self._to_paper:
                return [Piece(layer, self._to_paper[module], kind)]
            for fused, components in self.fused:
                if module == fused:
                    dim = self.fused_dim if kind == "weight" else 0
                    return [Piece(layer, c, kind, i, len(components), dim) for i, c in enumerate(components)]
            for component, inside, _ in self.next_layer:
                if module == inside and layer > 0:
                    return [Piece(layer - 1, component, kind)]
            return []
        for component, _, last in self.next_layer:
            if name in (f"{self.base}.{last}.weight", f"{self.base}.{last}.bias"):
                if self.n_layers is None:
                    raise ValueError(f"{name}: the layer count is unknown; bind the row with for_config(config)")
                return [Piece(self.n_layers - 1, component, name.rsplit(".", 1)[1])]
        return []

    def parse(self, name: str) -> tuple[int, str, str] | None:
        """(layer, paper component, kind) of a tensor that is one whole component, else None."""
        found = self.pieces(name)
        if len(found) != 1:
            return None
        return found[0][:3]

    def is_head(self, name: str) -> bool:
        return not name.startswith(f"{self.base}.")

    def is_encoder(self, name: str) -> bool:
        """Inside the encoder layers, or a component piece outside them (a pre-LN final norm): the
        random control's pool. Not a pre-LN layer 0's input norm, which normalises the embeddings
        as BERT's embedding LayerNorm does."""
        if self.pieces(name):
            return True
        m = self._layer_re.match(name)
        return m is not None and all(m.group(2) != inside for _, inside, _ in self.next_layer)

    def is_layernorm(self, name: str) -> bool:
        return any(p.component in self.layernorm for p in self.pieces(name))

    def param_name(self, layer: int, component: str, kind: str) -> str:
        """The tensor that holds (layer, component, kind), whole or as a row block."""
        for fused, components in self.fused:
            if component in components:
                return f"{self.base}.{self.layer_path}.{layer}.{fused}.{kind}"
        for shifted, inside, last in self.next_layer:
            if component == shifted:
                if self.n_layers is not None and layer == self.n_layers - 1:
                    return f"{self.base}.{last}.{kind}"
                return f"{self.base}.{self.layer_path}.{layer + 1}.{inside}.{kind}"
        module = next((m for c, m in self.renames if c == component), component)
        return f"{self.base}.{self.layer_path}.{layer}.{module}.{kind}"


def _decoder(mlp_norm: str = "post_attention_layernorm", **kwargs: Any) -> Architecture:
    """The Llama layout (Mistral, Qwen2, Gemma share it): q/k/v/o projections, a gated MLP whose
    gate and up projections are both intermediate.dense; `mlp_norm` is the norm the MLP reads through."""
    return Architecture(
        base="model", layer_path="layers",
        renames=(
            ("attention.self.query", "self_attn.q_proj"),
            ("attention.self.key", "self_attn.k_proj"),
            ("attention.self.value", "self_attn.v_proj"),
            ("attention.output.dense", "self_attn.o_proj"),
            ("attention.output.LayerNorm", mlp_norm),
            ("intermediate.dense", "mlp.gate_proj"),
            ("intermediate.dense", "mlp.up_proj"),
            ("output.dense", "mlp.down_proj"),
        ),
        next_layer=(("output.LayerNorm", "input_layernorm", "norm"),),
        last_token=True,
        **kwargs,
    )


# keyed by config.model_type
ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(base="bert"),
    "roberta": Architecture(base="roberta"),
    "xlm-roberta": Architecture(base="roberta"),
    "electra": Architecture(base="electra"),
    "deberta-v2": Architecture(base="deberta", renames=(
        ("attention.self.query", "attention.self.query_proj"),
        ("attention.self.key", "attention.self.key_proj"),
        ("attention.self.value", "attention.self.value_proj"),
    ), packable=False),
    "distilbert": Architecture(base="distilbert", layer_path="transformer.layer", renames=(
        ("attention.self.query", "attention.q_lin"),
        ("attention.self.key", "attention.k_lin"),
        ("attention.self.value", "attention.v_lin"),
        ("attention.output.dense", "attention.out_lin"),
        ("attention.output.LayerNorm", "sa_layer_norm"),
        ("intermediate.dense", "ffn.lin1"),
        ("output.dense", "ffn.lin2"),
        ("output.LayerNorm", "output_layer_norm"),
    )),
    # Pre-LN: a post-LN layer ends by normalising the residual stream it hands on; here that stream
    # is normalised where it is read, by the next layer's attn_norm, and after the last layer by
    # final_norm (layer 0's attn_norm is an Identity: the embeddings' norm is BERT's embedding
    # LayerNorm). mlp_norm normalises the stream after attention, as BERT's attention-output
    # LayerNorm does. Wi is the GLU's input and gate projection, both halves intermediate.dense.
    "modernbert": Architecture(
        base="model", layer_path="layers",
        renames=(
            ("attention.output.dense", "attn.Wo"),
            ("attention.output.LayerNorm", "mlp_norm"),
            ("intermediate.dense", "mlp.Wi"),
            ("output.dense", "mlp.Wo"),
        ),
        fused=(("attn.Wqkv", QKV),),
        next_layer=(("output.LayerNorm", "attn_norm", "final_norm"),),
        bias_switches=(("attention_bias", False), ("mlp_bias", False), ("norm_bias", False)),
    ),
    # Decoders (sequence classification reads the last non-padding token; the head is `score`).
    # Pre-LN as ModernBERT: layer i+1's input norm plays layer i's output LayerNorm (the last
    # layer's: the final norm), the norm before the MLP plays attention.output.LayerNorm, and layer
    # 0's input norm normalises the embeddings (BERT's embedding LayerNorm: not a component).
    "llama": _decoder(bias_switches=(("attention_bias", False), ("mlp_bias", False))),
    "mistral": _decoder(bias_switches=(("attention_bias", False),)),  # no key: never biases
    "qwen2": _decoder(),  # biases on q, k and v, always
    "gemma": _decoder(bias_switches=(("attention_bias", False),)),  # RMSNorm scaling by 1 + w
    # Gemma 2 and 3 wrap each sublayer in two norms: the MLP reads through pre_feedforward_layernorm
    # (Llama's post_attention_layernorm); post_attention_layernorm and post_feedforward_layernorm
    # normalise a sublayer's output before it joins the stream, and Gemma 3's q_norm and k_norm each
    # head's queries and keys: none has a BERT counterpart, so they are no component (full
    # fine-tuning and the random control's pool include them; the LayerNorm method does not).
    "gemma2": _decoder("pre_feedforward_layernorm", bias_switches=(("attention_bias", False),)),
    "gemma3_text": _decoder("pre_feedforward_layernorm", bias_switches=(("attention_bias", False),)),
    # GPT-2: c_attn is a Conv1D ([in, 3 x hidden]) whose column thirds are query, key and value
    "gpt2": Architecture(
        base="transformer", layer_path="h",
        renames=(
            ("attention.output.dense", "attn.c_proj"),
            ("attention.output.LayerNorm", "ln_2"),
            ("intermediate.dense", "mlp.c_fc"),
            ("output.dense", "mlp.c_proj"),
        ),
        fused=(("attn.c_attn", QKV),),
        fused_dim=1,
        next_layer=(("output.LayerNorm", "ln_1", "ln_f"),),
        last_token=True,
    ),
}


def get_architecture(model_type: str) -> Architecture:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ValueError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(ARCHITECTURES)} "
            "(add a row to lnpeft.model.architectures.ARCHITECTURES)"
        ) from None


def has_encoder_biases(config_json: dict) -> bool:
    """Whether a model of this config.json (a dict) has biases outside its head (BitFit trains them)."""
    switches = get_architecture(config_json.get("model_type", "")).bias_switches
    return not switches or any(bool(config_json.get(key, default)) for key, default in switches)


def check_layernorm_set(components: Any, where: str) -> tuple[str, ...]:
    """A LayerNorm set as given by a user: a non-empty list of LAYERNORM_CHOICES."""
    if isinstance(components, str):
        components = [components]
    if not components or not all(isinstance(c, str) and c in LAYERNORM_CHOICES for c in components):
        raise ValueError(f"{where}: the LayerNorm set must be a non-empty list of {', '.join(LAYERNORM_CHOICES)}; "
                         f"got {components!r}")
    return tuple(c for c in LAYERNORM_CHOICES if c in components)


def for_config(config: Any) -> Architecture:
    """The row of a model's `config`, bound to its layer count and its chosen LayerNorm set."""
    arch = get_architecture(config.model_type)
    chosen = getattr(config, LAYERNORM_CONFIG_KEY, None)
    layernorm = check_layernorm_set(chosen, f"config.json {LAYERNORM_CONFIG_KEY}") if chosen else arch.layernorm
    return replace(arch, n_layers=config.num_hidden_layers, layernorm=layernorm)
