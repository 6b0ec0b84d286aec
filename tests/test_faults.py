"""Faults and reruns lose nothing: a SIGKILLed fine-tuning job resumes to the uninterrupted
result, a killed Snakemake leaves no half-written output, and same-seed runs are identical (CPU).

Fast checks use a tiny in-test BERT (`tiny_checkpoint`) cached through the real workflow
(model.source folder); the MiniLM end-to-end variants are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from test_finetune import make_split
from test_workflow import TARGETS, glue_dir, needs_glue, snakemake, write_config

from lnpeft.data.artifacts import read_parquet

REPO = Path(__file__).resolve().parents[1]
# Columns that measure wall-clock time: the only ones allowed to differ between equal runs.
WALL_CLOCK = {"seconds"}
TINY_MODEL = "tiny-bert"
TINY_RUN = f"results/runs/{TINY_MODEL}/rte/layernorm/lr0.003_seed0"
# data, checkpoint, init, one LayerNorm run and Fisher: 5 jobs (drift's extra full fine-tune would
# add little beyond the run's own check and cost two more job start-ups)
TINY_TARGETS = [f"{TINY_RUN}/epochs.parquet", f"results/fisher/{TINY_MODEL}/rte.parquet"]


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT encoder with a character-level WordPiece vocabulary (any English
    text tokenises without [UNK]), saved like a pretrained checkpoint: the source of `cache-model`."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    punct = list(".,;:!?'\"()-/&%$")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *punct, *(f"##{c}" for c in chars)]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_config(folder: Path, **overrides) -> Path:
    """The tiny scenario on the tiny BERT: RTE only, 3 epochs of 64 examples, small Fisher."""
    checkpoint = folder.parent / f"{folder.name}-checkpoint"
    if not checkpoint.exists():
        tiny_checkpoint(checkpoint)
    base = {"model.name": TINY_MODEL, "model.source": "folder", "model.location": str(checkpoint),
            "tasks": ["rte"], "methods": ["bitfit", "layernorm"], "learning_rates.peft": [3.0e-3],
            "data.subsample.train": 64, "data.subsample.validation": 16, "data.subsample.test": 16,
            "training.epochs": 3, "training.batch_size": 8, "fisher.max_samples": 16,
            "training.pack_size": 1}  # one job per run; test_kill_snakemake_mid_pack... packs
    return write_config(folder, {**base, **overrides})


def parquet_files(results: Path) -> dict[str, Path]:
    return {str(p.relative_to(results)): p for p in sorted(results.rglob("*.parquet"))}


def compare_parquet(a: Path, b: Path) -> tuple[list[str], list[str]]:
    """(files whose data differ, files whose bytes differ) between two results/ folders; the
    data compare ignores wall-clock columns; both must hold the same parquet files."""
    fa, fb = parquet_files(a), parquet_files(b)
    assert fa.keys() == fb.keys()
    data_diff, byte_diff = [], []
    for name in fa:
        da, db = pd.read_parquet(fa[name]), pd.read_parquet(fb[name])
        keep = [c for c in da.columns if c not in WALL_CLOCK]
        if not da[keep].equals(db[keep]) or list(da.columns) != list(db.columns):
            data_diff.append(name)
        if fa[name].read_bytes() != fb[name].read_bytes():
            byte_diff.append(name)
    return data_diff, byte_diff


# ---------------------------------------------------------------- SIGKILL one fine-tuning job

# Runs `lnpeft finetune` (argv after the script) and, if LNPEFT_TEST_HANG_AT is set, prints
# HANG and sleeps inside that optimizer step: the parent then SIGKILLs it mid-epoch. The sleep
# only delays; it changes no number.
_DRIVER = """
import os, sys, time
import torch
from lnpeft import cli
hang_at = int(os.environ.get("LNPEFT_TEST_HANG_AT", "0"))
original, calls = torch.optim.AdamW.step, [0]
def step(self, *a, **k):
    calls[0] += 1
    if calls[0] == hang_at:
        print("\\nHANG", flush=True)  # own line: tqdm's bar has no newline
        time.sleep(300)
    return original(self, *a, **k)
torch.optim.AdamW.step = step
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def tiny_run_inputs(tmp_path_factory) -> dict[str, Path]:
    """A real `lnpeft cache-model` + `lnpeft init` of the tiny BERT, and toy sst2 splits."""
    from lnpeft import cli

    d = tmp_path_factory.mktemp("faults")
    tiny_checkpoint(d / "source")
    assert cli.main(["cache-model", "--source", "folder", "--location", str(d / "source"),
                     "--out", str(d / "checkpoint")]) == 0
    assert cli.main(["init", "--checkpoint", str(d / "checkpoint"), "--task", "sst2", "--seed", "0",
                     "--out", str(d / "init")]) == 0
    return {"init": d / "init", "train": make_split(d / "train.parquet", 96, seed=1),
            "dev": make_split(d / "validation.parquet", 32, seed=2),
            "test": make_split(d / "test.parquet", 16, seed=3, labelled=False)}


def finetune_argv(inputs: dict[str, Path], out: Path, **options) -> list[str]:
    opts = {"task": "sst2", "method": "full", "lr": "3e-3", "seed": "0", "epochs": "3",
            "batch-size": "8", "eval-batch-size": "16", "max-length": "32", "weight-decay": "0.1",
            "compile": "false", "threads": "1", **options}
    argv = ["finetune", "--init", str(inputs["init"]), "--train", str(inputs["train"]),
            "--dev", str(inputs["dev"]), "--test", str(inputs["test"]), "--out", str(out)]
    return argv + [a for k, v in opts.items() for a in (f"--{k}", str(v))]


def run_driver(argv: list[str], hang_at: int = 0) -> subprocess.Popen:
    env = {**os.environ, "LNPEFT_TEST_HANG_AT": str(hang_at), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", _DRIVER, *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigkill_mid_epoch_then_rerun_resumes_to_the_uninterrupted_result(tiny_run_inputs, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    from lnpeft import cli

    assert cli.main(finetune_argv(tiny_run_inputs, ref)) == 0  # uninterrupted, in-process

    # 12 steps per epoch (96 examples, batch 8): step 17 is the 5th step of epoch 2
    proc = run_driver(finetune_argv(tiny_run_inputs, run), hang_at=12 + 5)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == "HANG":
            break
    assert lines and lines[-1].strip() == "HANG", "".join(lines)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    # killed mid-epoch 2: epoch 1's checkpoint (with its best-epoch predictions and state) and no
    # output file at all: a run's files are written once, at its end, so none can look complete
    assert sorted(p.name for p in run.iterdir()) == ["resume.pt"]
    ckpt = torch.load(run / "resume.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["best_predictions"]["split"].nunique() == 1  # dev only: test at the end

    proc = run_driver(finetune_argv(tiny_run_inputs, run))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "resuming after epoch 1" in out
    assert not (run / "resume.pt").exists()
    expected, resumed = (read_parquet(d / "epochs.parquet", "epochs") for d in (ref, run))
    assert list(resumed["epoch"]) == [1, 2, 3]
    keep = [c for c in expected.columns if c not in WALL_CLOCK]
    pd.testing.assert_frame_equal(expected[keep], resumed[keep], check_exact=True)
    pd.testing.assert_frame_equal(read_parquet(ref / "predictions.parquet", "predictions"),
                                  read_parquet(run / "predictions.parquet", "predictions"), check_exact=True)
    assert (ref / "state.safetensors").read_bytes() == (run / "state.safetensors").read_bytes()


# ---------------------------------------------------------------- the workflow: determinism


@pytest.fixture(scope="module")
def tiny_workflow_runs(tmp_path_factory) -> list[Path]:
    """The tiny-BERT scenario (data, checkpoint, init, a LayerNorm run, Fisher) run twice
    from scratch in two folders with the same seed."""
    if glue_dir() is None:
        pytest.skip("no local GLUE copy")
    folders = []
    for name in ("first", "second"):
        folder = tmp_path_factory.mktemp(name)
        proc = snakemake(folder, tiny_config(folder), *TINY_TARGETS, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        folders.append(folder)
    return folders


@needs_glue
def test_same_seed_workflow_runs_give_identical_parquet(tiny_workflow_runs):
    first, second = (f / "results" for f in tiny_workflow_runs)
    files = parquet_files(first)
    assert {f"{TINY_RUN.removeprefix('results/')}/epochs.parquet", "data/rte/train.parquet",
            f"fisher/{TINY_MODEL}/rte.parquet", f"fisher/{TINY_MODEL}/rte.components.parquet"} <= files.keys()
    data_diff, byte_diff = compare_parquet(first, second)
    print(f"{len(files)} parquet files; data differ: {data_diff}; bytes differ: {byte_diff}")
    assert data_diff == []
    # bytes too, except where a wall-clock column is stored (epochs.parquet's `seconds`)
    assert set(byte_diff) <= {f"{TINY_RUN.removeprefix('results/')}/epochs.parquet"}, byte_diff
    epochs = read_parquet(first.parent / TINY_RUN / "epochs.parquet", "epochs")
    assert list(epochs["epoch"]) == [1, 2, 3] and epochs["train_loss"].notna().all()
    for name in ("state.safetensors", "predictions.parquet"):
        assert (first.parent / TINY_RUN / name).read_bytes() == (second.parent / TINY_RUN / name).read_bytes()


@needs_glue
def test_nothing_to_do_after_a_complete_run(tiny_workflow_runs):
    folder = tiny_workflow_runs[0]
    proc = snakemake(folder, folder / "config.yaml", "-n", *TINY_TARGETS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- the workflow: kill Snakemake


def _readable(results: Path) -> list[str]:
    """Every parquet under results/ opens and reads in full (pyarrow checks the footer)."""
    for path in results.rglob("*.parquet"):
        pq.read_table(path)
    return sorted(str(p.relative_to(results)) for p in results.rglob("*.parquet"))


def kill_snakemake_when(folder: Path, config: Path, marker: Path, timeout: float = 600) -> None:
    """Run Snakemake on the tiny targets and SIGKILL it and every job it started (a lost node) as
    soon as `marker` exists."""
    exe = Path(sys.executable).parent / "snakemake"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([str(exe), "-s", str(REPO / "Snakefile"), "--configfile", str(config),
                             "--cores", "2", *TINY_TARGETS], cwd=folder, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@needs_glue
@pytest.mark.slow
def test_kill_snakemake_mid_run_then_rerun_completes_identically(tiny_workflow_runs, tmp_path):
    """SIGKILL Snakemake and its jobs (a lost node) while the fine-tuning job is in epoch 2+:
    no output is half-written, the rerun resumes the run and ends where an uninterrupted run does."""
    config = tiny_config(tmp_path, **{"training.epochs": 3})
    resume = tmp_path / TINY_RUN / "resume.pt"
    kill_snakemake_when(tmp_path, config, resume)
    assert resume.exists() and not (tmp_path / TINY_RUN / "epochs.parquet").exists(), "not killed mid-run"
    _readable(tmp_path / "results")

    # the killed job wrote none of its outputs (a run writes its files at its end), so nothing of it
    # can be taken as done: its folder holds the epoch checkpoint alone ...
    assert sorted(p.name for p in (tmp_path / TINY_RUN).iterdir()) == ["resume.pt"]
    # ... the killed Snakemake's lock stays (no handler runs on SIGKILL): --unlock, as it says ...
    profile = ("--profile", str(REPO / "profiles" / "local"))
    locked = snakemake(tmp_path, config, *profile, *TINY_TARGETS)
    assert locked.returncode != 0 and "LockException" in locked.stderr and "--unlock" in locked.stderr
    assert snakemake(tmp_path, config, "--unlock", *TINY_TARGETS).returncode == 0
    # ... and the shipped profiles (rerun-incomplete: true) rebuild them, resuming the run
    rerun = snakemake(tmp_path, config, *profile, *TINY_TARGETS, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    assert "resuming after epoch" in (tmp_path / "results" / "logs" / "finetune" / TINY_MODEL / "rte"
                                      / "layernorm" / "lr0.003_seed0.log").read_text()
    assert _readable(tmp_path / "results") == _readable(tiny_workflow_runs[0] / "results")
    assert compare_parquet(tiny_workflow_runs[0] / "results", tmp_path / "results")[0] == []
    dry = snakemake(tmp_path, config, "-n", *TINY_TARGETS)
    assert "Nothing to be done" in dry.stdout + dry.stderr


@needs_glue
@pytest.mark.slow
def test_kill_snakemake_mid_pack_then_rerun_resumes_it(tiny_workflow_runs, tmp_path):
    """The same kill with packing on (BitFit and LayerNorm in one pack job): the pack's runs keep
    their checkpoints in results/packs/, nothing in results/runs/ looks complete, and the rerun
    resumes the pack and ends where the unpacked workflow does, up to float rounding."""
    config = tiny_config(tmp_path, **{"training.pack_size": 2})
    staged = tmp_path / "results" / "packs" / TINY_MODEL / "rte" / "lr0.003_seed0"
    kill_snakemake_when(tmp_path, config, staged / "layernorm" / "resume.pt")
    assert (staged / "layernorm" / "resume.pt").exists() and (staged / "bitfit" / "resume.pt").exists()
    assert not (tmp_path / TINY_RUN / "epochs.parquet").exists() and not (staged / "grid-p0.json").exists()
    _readable(tmp_path / "results")
    assert snakemake(tmp_path, config, "--unlock", *TINY_TARGETS).returncode == 0
    rerun = snakemake(tmp_path, config, "--profile", str(REPO / "profiles" / "local"), *TINY_TARGETS, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    log = (tmp_path / "results" / "logs" / "train_pack" / TINY_MODEL / "rte" / "lr0.003_seed0" / "grid-p0.log")
    assert "rte/layernorm/lr0.003_seed0: resuming after epoch" in log.read_text()
    status = json.loads((staged / "grid-p0.json").read_text())["runs"]
    assert [(r["run"], r["status"]) for r in status] == [("rte/bitfit/lr0.003_seed0", "done"),
                                                         ("rte/layernorm/lr0.003_seed0", "done")]
    packed, alone = (read_parquet(f / TINY_RUN / "epochs.parquet", "epochs")
                     for f in (tmp_path, tiny_workflow_runs[0]))
    keep = [c for c in alone.columns if c not in WALL_CLOCK]
    pd.testing.assert_frame_equal(alone[keep], packed[keep], rtol=1e-4)
    assert (tmp_path / TINY_RUN / "state.safetensors").stat().st_ino == (staged / "layernorm" / "state.safetensors").stat().st_ino


# ---------------------------------------------------------------- MiniLM end to end (slow)


MULTI_THREADED_RULES = ("finetune", "finetune_fisher_subset", "train_pack", "finetune_for_drift", "compute_fisher")
"""The rules whose `threads:` is above 1 (the Makefile's DEMO_THREADS)."""


@needs_glue
@pytest.mark.slow
def test_minilm_end_to_end_twice_is_identical(tmp_path):
    """The full tiny scenario (MiniLM, tests/workflow/tiny) twice: identical parquet data. One
    thread per job, two jobs side by side, as the demo and `make reproduce` run: with two threads
    per job a job rarely ends in the last bits elsewhere (docs/reproducibility.md, its last paragraph)."""
    runs = []
    one_thread = ["--set-threads", *(f"{rule}=1" for rule in MULTI_THREADED_RULES)]  # after the targets: it takes the rest
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        proc = snakemake(folder, write_config(folder), *TARGETS, *one_thread, timeout=3600)
        assert proc.returncode == 0, proc.stderr[-5000:]
        runs.append(folder / "results")
    data_diff, byte_diff = compare_parquet(*runs)
    assert data_diff == []
    print(f"parquet files with differing bytes: {byte_diff}")


def test_a_deterministic_failure_exits_3_and_its_retry_fails_at_once(tiny_run_inputs, tmp_path, capsys, monkeypatch):
    """Snakemake resubmits a failed job at 2x and 3x the time whatever failed it. A run whose loss
    turns NaN fails the same way every time: it exits 3, records the failure, and a retry of the
    same run (--attempt 2, as the rules pass Snakemake's attempt) fails at once with that message,
    without training; a new attempt 1 (a fresh invocation, after a fix) trains again."""
    from lnpeft import cli
    from lnpeft.train import finetune as ft

    out = tmp_path / "run"
    argv = finetune_argv(tiny_run_inputs, out, lr="1e6", **{"max-grad-norm": "0"})
    assert cli.main([*argv, "--attempt", "1"]) == 3
    first = capsys.readouterr().err.strip().splitlines()[-1]
    assert "loss is nan" in first or "loss is inf" in first
    record = json.loads((out / "failed.json").read_text())
    assert record["deterministic"] and record["error"] == "NonFiniteLossError"
    trained = []
    monkeypatch.setattr(ft, "finetune_pack", lambda *a, **k: trained.append(1) or pytest.fail("trained again"))
    assert cli.main([*argv, "--attempt", "2"]) == 3
    retry = capsys.readouterr().err.strip().splitlines()[-1]
    assert retry.startswith("lnpeft finetune: error: run sst2/full/lr1e+06_seed0") and "recorded in" in retry
    assert "by attempt 1: the same inputs fail the same way; fix the cause and run again)" in retry and not trained
    # other options (the fix: another lr) are another run: no record applies
    monkeypatch.undo()
    assert cli.main(finetune_argv(tiny_run_inputs, out, lr="3e-3") + ["--attempt", "2"]) == 0
    assert not (out / "failed.json").exists()
