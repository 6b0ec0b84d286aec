"""Per-architecture parameter naming, keyed by `config.model_type`: a new encoder is a new row.

Everything that needs to know "which tensor is layer 7's output LayerNorm" asks this table, so
methods, drift, Fisher and masks agree on names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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

LAYERNORM_COMPONENT = "output.LayerNorm"
"""The paper's "LayerNorm": each layer's output LayerNorm (not the attention-output one)."""


@dataclass(frozen=True)
class Architecture:
    base: str
    """The base model's attribute inside the *ForSequenceClassification wrapper
    (`model.base_model_prefix`). Every parameter outside it is the task head (always trained):
    BERT's classifier, RoBERTa's and ELECTRA's two-layer classifier, DistilBERT's pre_classifier
    and classifier, DeBERTa's pooler and classifier."""
    layer_path: str = "encoder.layer"
    renames: tuple[tuple[str, str], ...] = ()
    """(paper component, this family's module path inside a layer) where the family's name differs
    from BERT's; everything downstream (drift, Fisher, Table 1, figures) speaks the paper's names."""

    @property
    def _layer_re(self) -> re.Pattern[str]:
        return re.compile(
            rf"^{re.escape(self.base)}\.{re.escape(self.layer_path)}\.(\d+)\.(.+)\.(weight|bias)$"
        )

    @property
    def _to_paper(self) -> dict[str, str]:
        family = dict(self.renames)
        return {family.get(c, c): c for c in COMPONENTS}

    def parse(self, name: str) -> tuple[int, str, str] | None:
        """`bert.encoder.layer.3.output.LayerNorm.bias` -> (3, 'output.LayerNorm', 'bias');
        `distilbert.transformer.layer.3.output_layer_norm.bias` -> the same component name."""
        m = self._layer_re.match(name)
        if not m or m.group(2) not in self._to_paper:
            return None
        return int(m.group(1)), self._to_paper[m.group(2)], m.group(3)

    def is_head(self, name: str) -> bool:
        return not name.startswith(f"{self.base}.")

    def is_encoder(self, name: str) -> bool:
        return name.startswith(f"{self.base}.{self.layer_path}.")

    def is_layernorm(self, name: str) -> bool:
        parsed = self.parse(name)
        return parsed is not None and parsed[1] == LAYERNORM_COMPONENT

    def param_name(self, layer: int, component: str, kind: str) -> str:
        return f"{self.base}.{self.layer_path}.{layer}.{dict(self.renames).get(component, component)}.{kind}"


# keyed by config.model_type; post-LN encoders only (their output LayerNorm is the paper's one)
ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(base="bert"),
    "roberta": Architecture(base="roberta"),
    "xlm-roberta": Architecture(base="roberta"),
    "electra": Architecture(base="electra"),
    "deberta-v2": Architecture(base="deberta", renames=(
        ("attention.self.query", "attention.self.query_proj"),
        ("attention.self.key", "attention.self.key_proj"),
        ("attention.self.value", "attention.self.value_proj"),
    )),
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
}


def get_architecture(model_type: str) -> Architecture:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ValueError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(ARCHITECTURES)} "
            "(add a row to lnpeft.architectures.ARCHITECTURES)"
        ) from None
