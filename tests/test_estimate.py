"""`lnpeft estimate`: a hand-computed projection of a tiny grid, config merging, throughput files."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from lnpeft.cli import main
from lnpeft.plan.config_file import deep_update, load_config
from lnpeft.plan.cost import (DEFAULT_THROUGHPUT, TOKENS, default_throughput, model_throughput, read_throughput,
                              run_cost)
from lnpeft.plan.estimate import estimate

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "tasks": ["rte"], "seeds": [0], "methods": ["layernorm"],
    "learning_rates": {"full": [1.0e-5], "peft": [1.0e-3]},
    "training": {"epochs": 2, "max_length": 128},
    "data": {"subsample": {"train": 100, "validation": 50, "test": 20}},
    "fractions": {"schemes": ["individual"], "values": [0.5], "learning_rates": [1.0e-3]},
    "drift": {"epochs": 1},
    "fisher": {"max_samples": 100},
}


def train_step_json(path, shape="tiny"):
    """A bench/train_step.py result with known numbers (two tasks, averaged by the reader)."""
    rec = []
    for task, scale in (("sst2", 0.5), ("rte", 1.5)):  # means: the unscaled numbers
        rec += [{"shape": shape, "task": task, "method": "full", "mode": "grouped", "padded_tokens_per_s": 1000 * scale,
                 "examples_per_s": 1.0},
                {"shape": shape, "task": task, "method": "layernorm", "mode": "grouped",
                 "padded_tokens_per_s": 2000 * scale, "examples_per_s": 1.0},
                {"shape": shape, "task": task, "method": "full", "mode": "padded128", "padded_tokens_per_s": 1.0,
                 "examples_per_s": 10 * scale},
                {"shape": shape, "task": task, "method": "layernorm", "mode": "padded128",
                 "padded_tokens_per_s": 1.0, "examples_per_s": 20 * scale}]
    path.write_text(json.dumps({"benchmark": "train_step", "machine": {"cpu": "test-cpu", "torch_threads": 2},
                                "results": rec}))
    return path


def fisher_json(path):
    path.write_text(json.dumps({"benchmark": "fisher", "results": [
        {"scope": "all", "batched_samples_per_s": 50.0, "naive_samples_per_s": 5.0},
        {"scope": "layernorm", "batched_samples_per_s": 999.0, "naive_samples_per_s": 99.0}]}))
    return path


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_hand_computed_projection(tmp_path, tiny_config):
    config = load_config([tiny_config])
    tp = read_throughput(train_step_json(tmp_path / "ts.json"), fisher_path=fisher_json(tmp_path / "f.json"))
    assert tp.ours_tokens_per_s == {"full": 1000, "layernorm": 2000}
    stages = estimate(config, tp)
    w = TOKENS["rte"]
    assert w == 69.6
    # RTE after subsampling: train 100, one dev split of 50, one test split of 20.
    # Table 2: one layernorm run, 2 epochs: 200 train, 100 dev, 20 test examples.
    ours_run = 200 * w / 2000 + (100 * w + 20 * w) / (3 * 1000)          # 9.744 s
    base_run = 200 / 20 + 120 / (3 * 10)                                 # 14 s
    assert stages["table2"].runs == 1 and stages["table2"].train_examples == 200
    assert stages["table2"].ours_s == pytest.approx(ours_run, rel=1e-12)
    assert stages["table2"].baseline_s == pytest.approx(base_run, rel=1e-12)
    assert ours_run == pytest.approx(9.744) and base_run == 14
    # fractions: one fisher-subset run, priced as layernorm (the file has no "fisher" method)
    assert stages["fractions"].runs == 1
    assert stages["fractions"].ours_s == pytest.approx(ours_run, rel=1e-12)
    # drift: one full run, 1 epoch, first dev split only, no test
    assert stages["drift"].ours_s == pytest.approx(100 * w / 1000 + 50 * w / 3000, rel=1e-12)  # 8.12
    assert stages["drift"].baseline_s == pytest.approx(100 / 10 + 50 / 30, rel=1e-12)
    # fisher: 100 rows at the 'all'-scope numbers
    assert stages["fisher"].ours_s == pytest.approx(2.0) and stages["fisher"].baseline_s == pytest.approx(20.0)


def test_per_task_settings_price_their_task(tmp_path):
    """per_task.rte's caps, epochs and grid change RTE's projection exactly as a global change would."""
    tp = read_throughput(train_step_json(tmp_path / "ts.json"), fisher_path=fisher_json(tmp_path / "f.json"))
    local = {**TINY, "per_task": {"rte": {"data": {"subsample": {"train": 60}}, "training": {"epochs": 3},
                                          "learning_rates": {"peft": [1e-3, 1e-2]}}}}
    overlay = copy.deepcopy(TINY)
    overlay["data"]["subsample"]["train"] = 60
    overlay["training"]["epochs"] = 3
    overlay["learning_rates"]["peft"] = [1e-3, 1e-2]
    paths = []
    for name, cfg in (("local", local), ("global", overlay)):
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(cfg))
    by_task, by_config = (estimate(load_config([p]), tp) for p in paths)
    for stage in ("table2", "fractions", "drift", "fisher"):
        assert by_task[stage].ours_s == pytest.approx(by_config[stage].ours_s, rel=1e-12), stage
        assert by_task[stage].runs == by_config[stage].runs, stage
    assert by_task["table2"].runs == 2 and by_task["table2"].train_examples == 2 * 60 * 3


def test_cli_total_hours(tmp_path, tiny_config, capsys):
    ts, f = train_step_json(tmp_path / "ts.json"), fisher_json(tmp_path / "f.json")
    assert main(["estimate", "--configfile", str(tiny_config), "--throughput", str(ts),
                 "--fisher-throughput", str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    total = out["stages"]["total"]
    assert total["runs"] == 4
    assert total["ours_hours"] == pytest.approx((9.744 * 2 + 8.12 + 2) / 3600, rel=1e-9)
    assert total["baseline_hours"] == pytest.approx((14 * 2 + 10 + 50 / 30 + 20) / 3600, rel=1e-9)
    assert "test-cpu" in out["throughput"]["device"]
    # the table form names every stage and the total
    assert main(["estimate", "--configfile", str(tiny_config), "--throughput", str(ts)]) == 0
    table = capsys.readouterr().out
    for stage in ("table2", "fractions", "drift", "fisher", "total"):
        assert f"\n{stage}" in table


def test_paper_grid_counts_and_default_throughput(capsys):
    config = load_config([])  # the schema's defaults are the paper's setup
    stages = estimate(config, default_throughput())
    assert stages["table2"].runs == 8 * 4 * 4       # tasks x methods x lrs
    assert stages["fractions"].runs == 8 * 3 * 9 * 4  # tasks x schemes x fractions x lrs
    assert stages["drift"].runs == 8 and stages["fisher"].runs == 8
    # Table 2's training examples: 20 epochs x 16 runs per task x the official train rows
    from lnpeft.data.tasks import OFFICIAL_ROWS

    rows = sum(OFFICIAL_ROWS[t]["train"] for t in config["tasks"])
    assert stages["table2"].train_examples == 20 * 16 * rows
    tp = default_throughput()
    assert tp.ours("layernorm") == pytest.approx(4096 / 0.0182)
    assert tp.ours("bitfit") == tp.ours("layernorm") == tp.ours("random") == tp.ours("fisher")
    assert tp.baseline("random") == tp.baseline("full")  # the naive masked random control
    assert tp.baseline("layernorm") == pytest.approx(32 / 0.0475)
    assert DEFAULT_THROUGHPUT["fisher"]["ours_samples_per_s"] == 533.0
    # ours beats the eager padded baseline on every stage
    for cost in stages.values():
        assert cost.ours_s < cost.baseline_s


def test_overlays_merge_recursively(tmp_path):
    base = tmp_path / "a.yaml"
    base.write_text(yaml.safe_dump({"training": {"epochs": 5, "batch_size": 8}, "tasks": ["rte", "cola"]}))
    over = tmp_path / "b.yaml"
    over.write_text(yaml.safe_dump({"training": {"epochs": 1}, "tasks": ["sst2"]}))
    config = load_config([base, over])
    assert config["training"]["epochs"] == 1            # later file wins
    assert config["training"]["batch_size"] == 8        # kept from the first file
    assert config["training"]["max_length"] == 128      # schema default
    assert config["tasks"] == ["sst2"]                  # lists are replaced, not merged
    assert config["fractions"]["values"][0] == 0.1
    assert deep_update({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_bad_inputs_name_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["estimate", "--configfile", str(missing)]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"benchmark": "fisher", "results": []}))
    with pytest.raises(ValueError, match="wrong.json"):
        read_throughput(wrong)
    ts = train_step_json(tmp_path / "ts.json", shape="minilm")
    with pytest.raises(ValueError, match="no results for shape 'bert-large'"):
        read_throughput(ts, shape="bert-large")


def test_packs_are_priced_from_a_measured_packing_gain_and_say_so(tmp_path):
    """A pack is one job; its projected time is its runs' time over the measured gain (none
    measured: no gain, and the table says it is projected)."""
    from lnpeft.plan.estimate import describe_packing

    plain = train_step_json(tmp_path / "plain.json", shape="bert-large")
    data = json.loads(plain.read_text())
    data["results"] += [{"shape": "bert-large", "task": t, "method": "pack", "mode": "packed", "speedup": s,
                         "padded_tokens_per_s": 1.0, "examples_per_s": 1.0} for t, s in (("sst2", 1.5), ("rte", 2.5))]
    (tmp_path / "packed.json").write_text(json.dumps(data))
    config = load_config([REPO / "config.yaml"])
    unmeasured, measured = read_throughput(plain), read_throughput(tmp_path / "packed.json")
    assert (unmeasured.pack_speedup, unmeasured.pack_measured) == (1.0, False)
    assert (measured.pack_speedup, measured.pack_measured) == (2.0, True)  # the mean over tasks
    a, b = estimate(config, unmeasured), estimate(config, measured)
    for stage in ("table2", "fractions"):  # full runs (table2) are never packed: only the packs halve
        full = sum(run_cost(config, unmeasured, t, "full", 20).ours_s for t in config["tasks"] for _ in range(4))
        packed = a[stage].ours_s - (full if stage == "table2" else 0)
        assert b[stage].ours_s == pytest.approx((full if stage == "table2" else 0) + packed / 2)
    assert (a["table2"].jobs, a["fractions"].jobs) == (32 + 32, 64) and a["table2"].runs == 8 * 16
    assert sum(c.jobs for c in a.values()) == 144
    assert "measured" in describe_packing(config, measured) and "x2.00" in describe_packing(config, measured)
    assert "no gain assumed" in describe_packing(config, unmeasured)
    config["training"]["pack_size"] = 1
    assert describe_packing(config, measured).startswith("packing: off")
    assert sum(c.jobs for c in estimate(config, measured).values()) == 1008


# Pricing by model size: issue 7 measured BERT-large; another model is priced by FLOPs per token
# (6N full, 4N parameter-efficient, 2N evaluation) at the FLOP/s BERT-large achieved.

LLAMA = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
         "head_dim": 8, "intermediate_size": 32, "vocab_size": 64, "max_position_embeddings": 64,
         "pad_token_id": 0, "tie_word_embeddings": False}


def save_llama(folder: Path, **shape) -> int:
    """A tiny random Llama saved as a folder; returns its parameters outside the embedding table,
    counted one tensor at a time."""
    import torch
    from transformers import AutoModel, LlamaConfig

    torch.manual_seed(0)
    model = AutoModel.from_config(LlamaConfig(**{**LLAMA, **shape}))
    model.save_pretrained(folder)
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("embed_tokens."))


def bert_large_params() -> int:
    """BERT-large's parameters outside its three embedding tables, counted one tensor at a time."""
    import torch
    from transformers import BertConfig, BertModel

    with torch.device("meta"):
        model = BertModel(BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                     intermediate_size=4096))
    tables = ("embeddings.word_embeddings.", "embeddings.position_embeddings.", "embeddings.token_type_embeddings.")
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(tables))


def folder_config(tmp_path, folder: Path, name: str = "tiny") -> dict:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**TINY, "model": {"name": name, "source": "folder", "location": str(folder)}}))
    return load_config([path])


def test_a_folder_model_is_priced_by_its_flops(tmp_path):
    n = save_llama(tmp_path / "llama")
    ref = bert_large_params()
    assert ref == 303_361_024  # 335,141,888 with the embedding tables
    tp = model_throughput(folder_config(tmp_path, tmp_path / "llama"))
    assert tp.model_params == n
    # seconds per token = FLOPs per token / the FLOP/s BERT-large achieved with that method
    full = DEFAULT_THROUGHPUT["ours_tokens_per_s"]["full"]
    layernorm = DEFAULT_THROUGHPUT["ours_tokens_per_s"]["layernorm"]
    assert 1 / tp.ours("full") == pytest.approx(6 * n / (6 * ref * full), rel=1e-12)
    for method in ("layernorm", "bitfit", "random", "fisher"):
        assert 1 / tp.ours(method) == pytest.approx(4 * n / (4 * ref * layernorm), rel=1e-12)
    # one run: training tokens at 4N, evaluation tokens at 2N against the full step's 6N FLOP/s
    config = folder_config(tmp_path, tmp_path / "llama")
    w = TOKENS["rte"]
    seconds = 200 * w * 4 * n / (4 * ref * layernorm) + 120 * w * 2 * n / (6 * ref * full)
    assert run_cost(config, tp, "rte", "layernorm", 2).ours_s == pytest.approx(seconds, rel=1e-12)
    assert tp.fisher_ours == pytest.approx(533.0 * ref / n, rel=1e-12)
    assert f"priced by FLOPs: model N = {n:,} parameters" in tp.pricing and str(tmp_path / "llama") in tp.pricing


def test_a_larger_model_costs_proportionally_more(tmp_path):
    small = save_llama(tmp_path / "small")
    large = save_llama(tmp_path / "large", hidden_size=32, intermediate_size=96, num_hidden_layers=3)
    assert large > 4 * small
    a, b = (estimate(c, model_throughput(c)) for c in (folder_config(tmp_path, tmp_path / "small", "small"),
                                                         folder_config(tmp_path, tmp_path / "large", "large")))
    for stage in ("table2", "fractions", "drift", "fisher"):
        assert b[stage].ours_s / a[stage].ours_s == pytest.approx(large / small, rel=1e-12), stage
        assert b[stage].baseline_s / a[stage].baseline_s == pytest.approx(large / small, rel=1e-12), stage


def test_bert_large_shape_is_priced_as_measured_and_an_uncached_model_says_so(tmp_path, capsys):
    """A bert-large config.json (cased vocabulary) prices as issue 7 measured; a hub model not
    cached yet keeps those numbers and the table says why."""
    folder = tmp_path / "bert-large-cased"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
        "intermediate_size": 4096, "vocab_size": 28996}))
    tp = model_throughput(folder_config(tmp_path, folder))
    plain = default_throughput()
    for method in ("full", "layernorm"):
        assert tp.ours(method) == pytest.approx(plain.ours(method), rel=1e-12)
        assert tp.baseline(method) == pytest.approx(plain.baseline(method), rel=1e-12)
    assert "N = 303M" in tp.pricing and "full 149, layernorm 273 TFLOP/s" in tp.pricing

    hub = tmp_path / "hub.yaml"
    hub.write_text(yaml.safe_dump({**TINY, "model": {"name": "not-cached-here", "source": "hub",
                                                     "location": "org/not-cached-here"}}))
    tp = model_throughput(load_config([hub]))
    assert tp.model_params is None and tp.ours_tokens_per_s == plain.ours_tokens_per_s
    assert main(["estimate", "--configfile", str(hub)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].startswith("priced at BERT-large's throughput as measured, whatever the model: "
                               "results/checkpoints/not-cached-here/config.json cannot be read yet")


def test_a_measured_throughput_file_wins_over_the_model_size(tmp_path, tiny_config, capsys):
    save_llama(tmp_path / "llama")
    llama = tmp_path / "llama.yaml"
    llama.write_text(yaml.safe_dump({"model": {"name": "llama", "source": "folder",
                                               "location": str(tmp_path / "llama")}}))
    ts = train_step_json(tmp_path / "ts.json")
    outs = []
    for configs in ([tiny_config], [tiny_config, llama]):
        assert main(["estimate", *(a for c in configs for a in ("--configfile", str(c))), "--throughput", str(ts),
                     "--json"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["stages"] == outs[1]["stages"]
    assert outs[1]["throughput"]["pricing"].startswith(f"priced by measured throughput: {ts} (shape tiny)")
    assert main(["estimate", "--configfile", str(tiny_config), "--configfile", str(llama)]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("priced by FLOPs: model N = ")


def test_a_7b_decoder_counted_from_its_config_alone(tmp_path):
    """Llama-2-7B's shape, config.json only (no weights): its count by hand, and time limits 21x
    BERT-large's at the conservative rate."""
    from lnpeft.model.size import flop_params_of
    from lnpeft.plan import runtime

    folder = tmp_path / "llama-7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
        "intermediate_size": 11008, "vocab_size": 32000}))
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096  # q k v o, gate up down, two RMSNorms
    n = 32 * per_layer + 4096  # + the final norm; the 32000 x 4096 embedding table is left out
    assert flop_params_of(folder) == n == 6_476_271_616
    config = folder_config(tmp_path, folder)
    factor = n / bert_large_params()
    assert runtime.size_factor(config) == pytest.approx(factor) and 21 < factor < 22
    epoch = (100 / runtime.TRAIN_PER_S + (50 + 20) / runtime.EVAL_PER_S) * factor  # RTE after the caps
    assert runtime.train_minutes(config, "rte", "layernorm") == int(15 + 2 * epoch / 60)
    assert "x21.3 for the model's size" in runtime.describe(config)
    # a model smaller than BERT-large keeps BERT-large's conservative rate
    save_llama(tmp_path / "llama")
    assert runtime.size_factor(folder_config(tmp_path, tmp_path / "llama")) == 1.0


def test_host_memory_grows_with_the_model_it_loads(tmp_path):
    """A 7B Llama's fp32 load (init, a GPU job's host side) asks 1.5 x 4 bytes per parameter, the
    embedding table included, + 2 GB; a small model keeps the rule's own floor; x the attempt."""
    from lnpeft.model.size import all_params_of
    from lnpeft.plan import runtime

    folder = tmp_path / "llama-7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
        "intermediate_size": 11008, "vocab_size": 32000}))
    n = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) + 4096 + 32000 * 4096
    assert all_params_of(folder) == n == 6_607_343_616  # Llama-2-7B without its LM head
    config = folder_config(tmp_path, folder)
    need = math.ceil(1.5 * 4 * n / 1e6) + 2048
    assert runtime.host_memory_mb(config, 8000) == need == 41693
    assert runtime.host_memory_mb(config, 32000, attempt=2) == 2 * need
    save_llama(tmp_path / "llama")
    assert runtime.host_memory_mb(folder_config(tmp_path, tmp_path / "llama"), 8000, attempt=2) == 16000


def test_drift_activate_false_prices_no_drift_fine_tunes(tiny_config, tmp_path):
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump({"drift": {"activate": False}}))
    stages = estimate(load_config([tiny_config, off]), default_throughput())
    assert stages["drift"].runs == 0 and stages["drift"].asked_s == 0
    assert estimate(load_config([tiny_config]), default_throughput())["drift"].runs == 1
