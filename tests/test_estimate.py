"""`lnpeft estimate`: a hand-computed projection of a tiny grid, config merging, throughput files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from lnpeft.cli import main
from lnpeft.plan.config_file import deep_update, load_config
from lnpeft.plan.cost import DEFAULT_THROUGHPUT, TOKENS, default_throughput, read_throughput, run_cost
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


def test_drift_activate_false_prices_no_drift_fine_tunes(tiny_config, tmp_path):
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump({"drift": {"activate": False}}))
    stages = estimate(load_config([tiny_config, off]), default_throughput())
    assert stages["drift"].runs == 0 and stages["drift"].asked_s == 0
    assert estimate(load_config([tiny_config]), default_throughput())["drift"].runs == 1
