"""`lnpeft evidence`: what it keeps of a results folder, and what it refuses to restore (synthetic
results folders; the round trip through Snakemake is tests/test_workflow.py's)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from lnpeft.errors import LnpeftError
from lnpeft.report import evidence


def _results(root, runs=("sst2/layernorm/lr0.01_seed0", "sst2/full/lr5e-05_seed0")):
    results = root / "results"
    files = {"data/sst2/train.parquet": b"rows", "init/m/sst2/seed0/model.safetensors": b"weights",
             "checkpoints/m/MANIFEST.json": b"{}", "checkpoints/m/model.safetensors": b"big",
             "fisher/m/sst2.parquet": b"fisher", "masks/m/global/sst2.parquet": b"mask",
             "drift/m/sst2.parquet": b"drift", "benchmarks/finetune/m/sst2/x.tsv": b"s\n1\n",
             "benchmarks/init_model/m/sst2/seed0.tsv": b"s\n2\n", "tables/scores.parquet": b"table"}
    options = {"train": "results/data/sst2/train.parquet", "dev": [str(results / "data/sst2/validation.parquet")],
               "test": [], "init": "results/init/m/sst2/seed0"}  # as the workflow names them, or absolute
    files["data/sst2/validation.parquet"] = b"dev rows"
    files["init/m/sst2/seed0/config.json"] = b"{}"
    for run in runs:
        for name in ("epochs.parquet", "predictions.parquet", "state.safetensors"):
            files[f"runs/m/{run}/{name}"] = f"{run}/{name}".encode()
        files[f"runs/m/{run}/run.json"] = json.dumps({"run": run, "options": options}).encode()
    for rel, data in files.items():
        (results / rel).parent.mkdir(parents=True, exist_ok=True)
        (results / rel).write_bytes(data)
    return results


def test_save_keeps_finished_runs_and_expensive_outputs_without_weights(tmp_path):
    results = _results(tmp_path)
    started = results / "runs/m/sst2/random/lr0.03_seed0"
    started.mkdir(parents=True)
    (started / "resume.pt").write_bytes(b"ckpt")
    (started / "epochs.parquet").write_bytes(b"stale")  # with resume.pt: not finished
    log = tmp_path / "1.snakemake.log"
    log.write_text("[Sat Dec  5 05:00:00 2026]\nrule finetune:\n[Sat Dec  5 05:01:00 2026]\nFinished job 3.\n")
    idle = tmp_path / "2.snakemake.log"
    idle.write_text("Nothing to be done.\n")
    # a run whose only job failed finished nothing, yet its wall time is the write-up's: kept
    failed = tmp_path / "3.snakemake.log"
    failed.write_text("[Sat Dec  5 06:00:00 2026]\nrule finetune:\n[Sat Dec  5 06:01:00 2026]\nError in rule finetune:\n")
    counts = evidence.save(results, tmp_path / "ev", [log, idle, failed])
    kept = sorted(p.relative_to(tmp_path / "ev").as_posix() for p in (tmp_path / "ev").rglob("*") if p.is_file())
    runs = [f"results/runs/m/sst2/{r}/{n}" for r in ("full/lr5e-05_seed0", "layernorm/lr0.01_seed0")
            for n in ("epochs.parquet", "predictions.parquet", "run.json")]
    assert kept == sorted(["inputs.json", "snakemake-logs/1.snakemake.log", "snakemake-logs/3.snakemake.log",
                           "results/benchmarks/finetune/m/sst2/x.tsv",
                           "results/drift/m/sst2.parquet", "results/fisher/m/sst2.parquet",
                           "results/masks/m/global/sst2.parquet", *runs])
    assert counts == {"added": 12, "updated": 0, "unchanged": 0}
    hashes = json.loads((tmp_path / "ev" / "inputs.json").read_text())["sha256"]
    assert sorted(hashes) == ["checkpoints/m/MANIFEST.json", "data/sst2/train.parquet", "data/sst2/validation.parquet",
                              "init/m/sst2/seed0/config.json", "init/m/sst2/seed0/model.safetensors"]
    assert hashes["data/sst2/train.parquet"] == hashlib.sha256(b"rows").hexdigest()
    # a second save adds nothing; a run trained again is an update, said so
    (results / "runs/m/sst2/full/lr5e-05_seed0/epochs.parquet").write_bytes(b"retrained")
    assert evidence.save(results, tmp_path / "ev", [log]) == {"added": 0, "updated": 1, "unchanged": 10}


def test_save_refuses_to_mix_two_starting_points(tmp_path):
    results = _results(tmp_path)
    evidence.save(results, tmp_path / "ev", [])
    (results / "init/m/sst2/seed0/model.safetensors").write_bytes(b"other weights")
    with pytest.raises(LnpeftError, match=r"init/m/sst2/seed0/model.safetensors: not the file .* save to a new folder"):
        evidence.save(results, tmp_path / "ev", [])


def test_restore_checks_inputs_then_copies_with_one_time(tmp_path):
    results = _results(tmp_path / "a")
    evidence.save(results, tmp_path / "ev", [])
    fresh = tmp_path / "b" / "results"
    with pytest.raises(LnpeftError, match=r"checkpoints/m/MANIFEST.json: missing \(5 input file\(s\).*snakemake data init"):
        evidence.restore(tmp_path / "ev", fresh, tmp_path / "b" / "log")
    for rel in json.loads((tmp_path / "ev" / "inputs.json").read_text())["sha256"]:
        (fresh / rel).parent.mkdir(parents=True, exist_ok=True)
        (fresh / rel).write_bytes((results / rel).read_bytes())
    (fresh / "data/sst2/train.parquet").write_bytes(b"other rows")
    with pytest.raises(LnpeftError, match=r"train.parquet: differs from the file the evidence's runs started from"
                                          r" .*package version; restoring"):
        evidence.restore(tmp_path / "ev", fresh, tmp_path / "b" / "log")
    (fresh / "data/sst2/train.parquet").write_bytes(b"rows")
    init = fresh / "init/m/sst2/seed0/model.safetensors"
    head = init.read_bytes()
    init.write_bytes(b"drawn by another kernel")  # only an init differs: the likely cause is the CPU
    with pytest.raises(LnpeftError, match=r"seed0/model.safetensors: differs .* only inits differ, so perhaps a CPU"):
        evidence.restore(tmp_path / "ev", fresh, tmp_path / "b" / "log")
    init.write_bytes(head)
    os.utime(fresh / "data/sst2/train.parquet", (1, 1))
    counts = evidence.restore(tmp_path / "ev", fresh, tmp_path / "b" / "log")
    assert counts == {"restored": 10, "already there": 0}
    restored = [p for p in fresh.rglob("*") if p.is_file() and ("runs" in p.parts or "masks" in p.parts)]
    assert len({p.stat().st_mtime for p in restored}) == 1  # no restored output older than a restored input
    assert (fresh / "runs/m/sst2/layernorm/lr0.01_seed0/epochs.parquet").read_bytes() == b"sst2/layernorm/lr0.01_seed0/epochs.parquet"
    assert not (fresh / "runs/m/sst2/layernorm/lr0.01_seed0/state.safetensors").exists()
    assert evidence.restore(tmp_path / "ev", fresh, tmp_path / "b" / "log") == {"restored": 0, "already there": 10}


def test_restore_refuses_a_different_file_and_restores_nothing(tmp_path):
    results = _results(tmp_path / "a")
    evidence.save(results, tmp_path / "ev", [])
    fresh = _results(tmp_path / "b", runs=("sst2/layernorm/lr0.01_seed0",))
    (fresh / "runs/m/sst2/layernorm/lr0.01_seed0/epochs.parquet").write_bytes(b"another run")
    with pytest.raises(LnpeftError, match=r"lr0.01_seed0/epochs.parquet: already there and different .* nothing was restored"):
        evidence.restore(tmp_path / "ev", fresh, tmp_path / "b" / "log")
    assert not (fresh / "runs/m/sst2/full").exists()
