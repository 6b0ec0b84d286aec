"""GPU time limits (lnpeft.plan.runtime): measured throughput with a margin, else the conservative rate;
the DAG's requests equal what `lnpeft estimate` reports for them."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from test_estimate import train_step_json
from test_profiles import REPO, dry_run, job_resources

from lnpeft.plan import runtime
from lnpeft.plan.config_file import load_config
from lnpeft.plan.cost import DEFAULT_THROUGHPUT, TOKENS, default_throughput
from lnpeft.plan.estimate import estimate

GPU_RULES = {"finetune", "train_pack", "finetune_for_drift", "compute_fisher"}


def h200_json(folder):
    """Issue 7's H200 numbers (estimate's default) written as bench JSON files."""
    d = DEFAULT_THROUGHPUT
    rows = [{"shape": "bert-large", "task": "rte", "method": m, "mode": "grouped", "padded_tokens_per_s": v,
             "examples_per_s": 1.0} for m, v in d["ours_tokens_per_s"].items()]
    rows += [{"shape": "bert-large", "task": "rte", "method": m, "mode": "padded128", "padded_tokens_per_s": 1.0,
              "examples_per_s": v} for m, v in d["baseline_examples_per_s"].items()]
    ts, fisher = folder / "train_step.json", folder / "fisher.json"
    ts.write_text(json.dumps({"benchmark": "train_step", "machine": {"gpu": "NVIDIA H200"}, "results": rows}))
    fisher.write_text(json.dumps({"benchmark": "fisher", "results": [
        {"scope": "all", "batched_samples_per_s": d["fisher"]["ours_samples_per_s"],
         "naive_samples_per_s": d["fisher"]["baseline_samples_per_s"]}]}))
    return ts, fisher


def test_conservative_rate_without_a_measurement():
    config = load_config([])
    # RTE, 20 epochs: 2490 train rows at 150/s, 277 dev + 3000 test rows at 600/s, + 15 min
    assert runtime.train_minutes(config, "rte", "layernorm") == int(15 + 20 * (2490 / 150 + 3277 / 600) / 60) == 22
    assert runtime.train_minutes(config, "rte", "full", attempt=3) == int(3 * (15 + 20 * (2490 / 150 + 3277 / 600) / 60))
    assert runtime.fisher_minutes(config, "rte") == int(10 + 2490 / 100 / 60)
    assert "conservative" in runtime.describe(config)


def test_measured_request_is_startup_plus_margin_times_the_projection(tmp_path):
    ts = train_step_json(tmp_path / "ts.json", shape="bert-large")  # full 1000 tokens/s, layernorm 2000
    config = load_config([])
    config["resources"] = {"throughput": str(ts), "margin": 3.0, "startup_minutes": 5}
    w = TOKENS["rte"]
    # 20 epochs of 2490 rows at 2000 tokens/s; each epoch's 277 dev rows and the 3000 test rows at 3 x 1000
    seconds = 20 * 2490 * w / 2000 + (20 * 277 * w + 3000 * w) / 3000
    assert seconds == pytest.approx(1931.168)
    assert runtime.train_minutes(config, "rte", "layernorm") == int(5 + 3 * seconds / 60) == 101
    assert runtime.train_minutes(config, "rte", "layernorm", attempt=2) == int(2 * (5 + 3 * seconds / 60))
    drift = 3 * 2490 * w / 1000 + 3 * 277 * w / 3000  # drift: 3 full epochs, first dev split, no test
    assert runtime.drift_minutes(config, "rte") == int(5 + 3 * drift / 60)
    assert runtime.fisher_minutes(config, "rte") == int(5 + 3 * 2490 / DEFAULT_THROUGHPUT["fisher"]["ours_samples_per_s"] / 60)
    assert "measured" in runtime.describe(config) and "x3 + 5 min" in runtime.describe(config)


def test_paper_run_requests_from_the_h200_numbers_and_the_docs_say_so(tmp_path):
    """The dry run's GPU time limits sum to estimate's `requested` total; docs/slurm.md quotes both totals."""
    ts, fisher = h200_json(tmp_path)
    overlay = tmp_path / "measured.yaml"
    overlay.write_text(yaml.safe_dump({"resources": {"throughput": str(ts), "fisher_throughput": str(fisher)}}))
    conservative = estimate(load_config([REPO / "config.yaml"]), default_throughput())
    measured = estimate(load_config([REPO / "config.yaml", overlay]), default_throughput())
    asked = lambda stages: sum(c.asked_s for c in stages.values()) / 3600  # noqa: E731
    ours = sum(c.ours_s for c in measured.values()) / 3600
    assert 2 * ours <= asked(measured) <= 2 * ours + 1008 * 10 / 60  # margin 2, 10 min start-up per job
    assert asked(measured) < asked(conservative) / 10
    log = dry_run(tmp_path, "slurm", overlay)
    minutes = sum(int(res["runtime"]) for rule, res in job_resources(log) if rule in GPU_RULES)
    assert minutes / 60 == pytest.approx(asked(measured), abs=1e-9)
    page = (REPO / "docs" / "slurm.md").read_text()
    section = page.split("## What the paper run submits", 1)[1].split("\n## ", 1)[0]
    quoted = [int(n.replace(",", "")) for n in re.findall(r"about ([0-9,]+) GPU-hours", section)]
    assert quoted == [round(asked(conservative), -2), round(asked(measured), -1)]


def test_gpu_memory_counts_bf16_weights_at_two_bytes_and_full_fine_tuning_at_sixteen():
    """model.dtype bfloat16 halves the weights of a parameter-efficient job; full fine-tuning (never
    with bfloat16, lnpeft.model.weight_dtype) keeps fp32 weights, gradients and two AdamW moments."""
    config = load_config([])
    shape = runtime.model_shape(config)
    bf16 = {**config, "model": {**config["model"], "dtype": "bfloat16"}}
    fp32_run, bf16_run = runtime.gpu_memory_mb(config, "rte"), runtime.gpu_memory_mb(bf16, "rte")
    assert (fp32_run - bf16_run) == pytest.approx(2 * shape["params"] / 1e6, abs=1)
    full = runtime.gpu_memory_mb(config, "rte", full=True)
    assert (full - fp32_run) == pytest.approx(12 * shape["params"] / 1e6, abs=1)
