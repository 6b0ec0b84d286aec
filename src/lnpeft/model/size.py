"""How many parameters a token passes through: a model's size as `lnpeft estimate` prices it.

Counted on the meta device from the model's config.json (no weights read or allocated), so a 7B
decoder costs a fraction of a second and any family transformers knows is counted exactly
(grouped-query attention, gated MLPs, biases or none).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

BERT_LARGE: dict[str, int] = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                              "intermediate_size": 4096}
"""The shape issue 7's throughput was measured at (bert-large-cased's, and uncased's)."""


def flop_params(config: Any) -> int:
    """Parameters of the base model (a transformers config's `AutoModel`) outside its embedding
    tables: the matrices a token's forward multiplies through, ~2 FLOPs each. An embedding row is
    looked up, not multiplied, so tables are left out (as in Kaplan et al. 2020's compute model);
    this also leaves a model's price independent of its vocabulary (bert-large-cased and -uncased
    count the same). The task head (a few thousand entries) is left out with the rest of the wrapper."""
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    tables = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in tables)


def all_params(config: Any) -> int:
    """Every parameter of the base model, embedding tables included: what a job holds in memory."""
    from transformers import AutoModel

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModel.from_config(config).parameters())


@lru_cache(maxsize=16)
def _counted(path: str, mtime_ns: int, tables: bool) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(Path(path).parent)
    return all_params(config) if tables else flop_params(config)


def _count_of(config_json: Path | str, tables: bool) -> int:
    """A count of the model a config.json (or its folder) describes, cached per file version."""
    path = Path(config_json)
    if path.is_dir():
        path = path / "config.json"
    try:
        return _counted(str(path.resolve()), path.stat().st_mtime_ns, tables)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot count the model's parameters ({err})") from None


def flop_params_of(config_json: Path | str) -> int:
    """`flop_params` of the model a config.json describes (cached per file version: the workflow
    asks once per job)."""
    return _count_of(config_json, tables=False)


def all_params_of(config_json: Path | str) -> int:
    """`all_params` of the model a config.json describes (cached as `flop_params_of`)."""
    return _count_of(config_json, tables=True)


@lru_cache(maxsize=1)
def bert_large_flop_params() -> int:
    """`flop_params` of BERT-large (303,361,024: 335M with its embedding tables)."""
    from transformers import BertConfig

    return flop_params(BertConfig(**BERT_LARGE))
