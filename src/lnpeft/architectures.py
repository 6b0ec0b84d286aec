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
    """Attribute of the base model inside the *ForSequenceClassification wrapper."""
    head_prefixes: tuple[str, ...] = ("classifier.",)
    """Parameter-name prefixes of the task head (always trained)."""
    layer_path: str = "encoder.layer"

    @property
    def _layer_re(self) -> re.Pattern[str]:
        return re.compile(
            rf"^{re.escape(self.base)}\.{re.escape(self.layer_path)}\.(\d+)\.(.+)\.(weight|bias)$"
        )

    def parse(self, name: str) -> tuple[int, str, str] | None:
        """`bert.encoder.layer.3.output.LayerNorm.bias` -> (3, 'output.LayerNorm', 'bias')."""
        m = self._layer_re.match(name)
        if not m or m.group(2) not in COMPONENTS:
            return None
        return int(m.group(1)), m.group(2), m.group(3)

    def is_head(self, name: str) -> bool:
        return name.startswith(self.head_prefixes)

    def is_encoder(self, name: str) -> bool:
        return name.startswith(f"{self.base}.{self.layer_path}.")

    def is_layernorm(self, name: str) -> bool:
        parsed = self.parse(name)
        return parsed is not None and parsed[1] == LAYERNORM_COMPONENT

    def param_name(self, layer: int, component: str, kind: str) -> str:
        return f"{self.base}.{self.layer_path}.{layer}.{component}.{kind}"


ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(base="bert"),
    "roberta": Architecture(base="roberta"),
}


def get_architecture(model_type: str) -> Architecture:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ValueError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(ARCHITECTURES)} "
            "(add a row to lnpeft.architectures.ARCHITECTURES)"
        ) from None
