"""A wrong config key or value stops the workflow before any job, with a message naming the key."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from test_workflow import REPO, needs_glue, snakemake, write_config

from lnpeft.plan.workflow_config import ConfigError, check_schema, coerce_numbers, fmt_lr


@needs_glue
@pytest.mark.parametrize("overrides, message", [
    ({"training.epochs": 0}, r"0 is less than the minimum of 1.*\['training'\]\['epochs'\]"),
    ({"training.epochz": 3}, r"Additional properties are not allowed \('epochz' was unexpected\)"),
    ({"tasks": ["rte", "boolq"]}, r"tasks\[1\]: 'boolq' is neither a GLUE task of the paper .* nor defined under custom_tasks"),
    ({"data.glue_dir": "/nonexistent/glue"}, r"data\.glue_dir: '/nonexistent/glue' is not a folder"),
    ({"stats.a": "full", "methods": ["bitfit", "layernorm"]}, r"stats\.a: method 'full' is not in methods"),
    ({"fractions.seeds": [0, 5]}, r"fractions\.seeds: seeds \[5\] are not in seeds \[0\]"),
    # a task whose TSV files are missing from data.glue_dir: the missing file is named
    ({"tasks": ["mnli"]}, r"Missing input files for rule prepare_glue_mnli.*MNLI/dev_matched\.tsv"),
])
def test_bad_config_names_the_key(tmp_path, overrides, message):
    config = write_config(tmp_path, overrides)
    proc = snakemake(tmp_path, config, "-n", "data")
    assert proc.returncode != 0
    assert re.search(message, proc.stdout + proc.stderr, re.S), proc.stderr[-3000:]
    assert not (tmp_path / "results").exists()


@needs_glue
def test_good_config_dry_run(tmp_path):
    proc = snakemake(tmp_path, write_config(tmp_path), "-n", "data", "pretrained", "init")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for rule, count in (("prepare_glue", 2), ("cache_checkpoint", 1), ("init_model", 2)):
        assert re.search(rf"^{rule}\s+{count}$", out, re.M), out[-3000:]


@pytest.mark.parametrize("overlay", [None, "configs/demo.yaml", "configs/minilm-converge.yaml",
                                     "configs/minilm-long.yaml", "tests/workflow/tiny/config.yaml"])
def test_shipped_configs_pass_the_schema_check(overlay):
    """check_schema (run before validate() in common.smk) accepts every config the project ships."""
    from pathlib import Path

    import yaml

    from lnpeft.plan.workflow_config import check_schema

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "config.yaml").read_text())
    if overlay:
        for key, value in yaml.safe_load((repo / overlay).read_text()).items():
            config[key] = {**config[key], **value} if isinstance(value, dict) else value
    check_schema(config, repo / "workflow" / "schemas" / "config.schema.yaml")


SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"


def test_numbers_written_as_text_become_numbers_in_place():
    """YAML 1.1 reads 1e-3 as text; a numeric key given text that is a number gets that number."""
    config = {
        "learning_rates": {"full": ["2e-5", " 3e-4 ", 1.0e-5], "peft": ["1e-3", "5E-5", "1E+2"]},
        "training": {"epochs": "3", "batch_size": "1e1", "warmup_ratio": "1e-1", "max_length": "32.0"},
        "fisher": {"max_samples": "1.5e1"},  # type [integer, "null"]
        "data": {"glue_dir": "1e-3", "subsample": {"train": "2.5"}},  # text key stays; 2.5 is not whole
        "fractions": {"values": ["abc", "nan", "inf", "0x10", "1e999"]},
        "model": {"name": "1e3"},
        "tasks": ["1e3"],
    }
    converted = coerce_numbers(config, SCHEMA_PATH)
    assert config["learning_rates"] == {"full": [2e-5, 3e-4, 1e-5], "peft": [1e-3, 5e-5, 100.0]}
    assert all(type(v) is float for v in config["learning_rates"]["peft"])
    assert config["training"] == {"epochs": 3, "batch_size": 10, "warmup_ratio": 0.1, "max_length": 32}
    assert all(type(v) is int for k, v in config["training"].items() if k != "warmup_ratio")
    assert config["fisher"] == {"max_samples": 15}
    # text where text is allowed, and text that is not (exactly) a number, stay as written
    assert config["data"] == {"glue_dir": "1e-3", "subsample": {"train": "2.5"}}
    assert config["fractions"]["values"] == ["abc", "nan", "inf", "0x10", "1e999"]
    assert config["model"] == {"name": "1e3"} and config["tasks"] == ["1e3"]
    assert converted == ["learning_rates.full[0]", "learning_rates.full[1]", "learning_rates.peft[0]",
                         "learning_rates.peft[1]", "learning_rates.peft[2]", "training.epochs",
                         "training.batch_size", "training.warmup_ratio", "training.max_length",
                         "fisher.max_samples"]
    # the paths hold the same lr text as for 1.0e-3 written with a dot
    assert fmt_lr(config["learning_rates"]["peft"][0]) == fmt_lr(1.0e-3) == "0.001"


def test_text_that_is_not_a_number_names_the_key():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["learning_rates"]["peft"] = ["abc", "1e-3"]
    config["training"]["epochs"] = "2.5"
    coerce_numbers(config, SCHEMA_PATH)
    with pytest.raises(ConfigError) as err:
        check_schema(config, SCHEMA_PATH)
    lines = str(err.value).splitlines()
    assert len(lines) == 3, lines  # header + one line per bad key
    assert lines[1].strip() == ("learning_rates.peft[0]: 'abc' is not a number; allowed: number > 0 "
                                "(config['learning_rates']['peft'][0])")
    assert lines[2].strip() == ("training.epochs: '2.5' is not a whole number; allowed: integer >= 1 "
                                "(config['training']['epochs'])")
    assert config["learning_rates"]["peft"][1] == 1e-3


def _dry_run_jobs(folder: Path, lr_text: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`snakemake -n -p table2 fig2` with the PEFT and fraction lr grids written as `lr_text`,
    verbatim in the YAML file; returns the run and its sorted output and shell-command lines."""
    folder.mkdir()
    config = write_config(folder, {"learning_rates.peft": ["LR"], "fractions.learning_rates": ["LR"]})
    text = config.read_text()
    assert text.count("- LR\n") == 2
    config.write_text(text.replace("- LR\n", f"- {lr_text}\n"))
    proc = snakemake(folder, config, "-n", "-p", "table2", "fig2")
    lines = sorted(line.strip() for line in proc.stdout.splitlines()
                   if line.strip().startswith("output:") or " lnpeft " in line)
    return proc, lines


@needs_glue
def test_dry_run_reads_1e_3_as_the_number(tmp_path):
    """`learning_rates: {peft: [1e-3]}` unquoted (text to YAML 1.1) plans the same jobs as 1.0e-3."""
    plain, plain_jobs = _dry_run_jobs(tmp_path / "plain", "1e-3")
    dotted, dotted_jobs = _dry_run_jobs(tmp_path / "dotted", "1.0e-3")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert dotted.returncode == 0, dotted.stderr[-3000:]
    assert plain_jobs == dotted_jobs
    assert any("/layernorm/lr0.001_seed0/epochs.parquet" in line for line in plain_jobs), plain_jobs
    assert any("/fisher-individual-f0.5/lr0.001_seed0/" in line for line in plain_jobs), plain_jobs
    # the packed runs of lr 0.001: BitFit, LayerNorm, random in one pack, the Fisher subsets in another
    assert sum("lnpeft finetune-pack" in line and "lr0.001_seed0" in line for line in plain_jobs) >= 2
    assert sum("lnpeft finetune-pack" in line and ",lr=0.001," in line for line in plain_jobs) >= 2
    assert not (tmp_path / "plain" / "results").exists()


@needs_glue
def test_dry_run_with_a_learning_rate_that_is_not_a_number_names_the_key(tmp_path):
    proc, _ = _dry_run_jobs(tmp_path / "abc", "abc")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "learning_rates.peft[0]: 'abc' is not a number; allowed: number > 0" in out, out[-3000:]
    assert "fractions.learning_rates[0]: 'abc' is not a number; allowed: number > 0" in out, out[-3000:]
    assert not (tmp_path / "abc" / "results").exists()


# regressions of the hostile-input properties (tests/test_hostile_inputs.py): each bad config is
# one ConfigError line naming the key, never a TypeError, a broken line or an OSError traceback

def _schema_lines(config: dict) -> list[str]:
    with pytest.raises(ConfigError) as err:
        check_schema(config, SCHEMA_PATH)
    return [line.strip() for line in str(err.value).split("\n")]


def test_int_and_text_unknown_top_level_keys_are_one_problem():
    config = yaml.safe_load((REPO / "config.yaml").read_text() + "1: 2\nzz: 3\n")  # `1:` is an int key
    lines = _schema_lines(config)
    assert lines[0] == f"invalid config (1 problem(s), schema {SCHEMA_PATH}):"
    assert lines[1].startswith("[1], zz: unknown key (Additional properties are not allowed (1, 'zz' were "
                               "unexpected)); allowed keys: custom_tasks, data, drift, fisher,")
    assert len(lines) == 2


def test_key_with_a_line_break_is_printed_escaped_on_one_line():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["training"]["epochs\nx"] = 1
    config["data"]["subsample"]["a\u2028b"] = 1  # a line separator str.splitlines() also splits at
    lines = _schema_lines(config)
    assert len(lines) == 3 and len(str("\n".join(lines)).splitlines()) == 3, lines
    assert lines[1].startswith(r"data.subsample['a\u2028b']: unknown key")
    assert lines[2].startswith(r"training['epochs\nx']: unknown key (Additional properties are not allowed "
                               r"('epochs\nx' was unexpected)); allowed keys of training: batch_size,")


def test_nan_and_inf_numbers_name_the_key():
    """YAML `.nan`/`.inf` are floats that pass every bound (NaN compares false): refused, once each."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["learning_rates"].update(yaml.safe_load("{full: [.nan], peft: [1.0e-3, .inf]}"))
    config["training"].update(yaml.safe_load("{warmup_ratio: .NaN, epochs: .nan}"))
    config["fractions"]["values"] = [float("-inf")]
    assert coerce_numbers(config, SCHEMA_PATH) == []  # a float NaN is no text to convert: it stays
    assert math.isnan(config["learning_rates"]["full"][0])
    assert _schema_lines(config)[1:] == [
        "fractions.values[0]: -inf is not a finite number; allowed: number > 0 and <= 1 "
        "(config['fractions']['values'][0])",
        "learning_rates.full[0]: nan is not a finite number; allowed: number > 0 (config['learning_rates']['full'][0])",
        "learning_rates.peft[1]: inf is not a finite number; allowed: number > 0 (config['learning_rates']['peft'][1])",
        "training.epochs: nan is not of type 'integer'; allowed: integer >= 1 (config['training']['epochs'])",
        # minimum and maximum both pass NaN silently; the one line says why it is refused
        "training.warmup_ratio: nan is not a finite number; allowed: number >= 0 and <= 1 "
        "(config['training']['warmup_ratio'])",
    ]


@pytest.mark.parametrize("section, update, message", [
    ("data", {"source": "tsv", "glue_dir": "g" * 300},
     "data.glue_dir: '" + "g" * 60 + "'... (300 bytes): cannot check it (File name too long); "
     "give a shorter path (at most 255 bytes per folder name)"),
    ("model", {"source": "folder", "location": "/tmp/" + "é" * 128},  # 256 bytes in UTF-8
     "model.location: '/tmp/" + "é" * 55 + "'... (261 bytes): cannot check it (File name too long); "
     "give a shorter path (at most 255 bytes per folder name)"),
])
def test_path_name_over_255_bytes_names_the_key(section, update, message):
    from lnpeft.plan.workflow_config import check_config

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config[section].update(update)
    with pytest.raises(ConfigError) as err:
        check_config(config)
    assert str(err.value) == message


def test_auto_glue_dir_with_an_overlong_env_folder_names_it(monkeypatch):
    from lnpeft.plan.workflow_config import check_config

    monkeypatch.setenv("LNPEFT_GLUE_DIR", "e" * 256)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["data"].update({"source": "tsv", "glue_dir": "auto"})
    with pytest.raises(ConfigError) as err:
        check_config(config)
    assert str(err.value).startswith("data.glue_dir: 'auto' tried $LNPEFT_GLUE_DIR '" + "e" * 60 + "'... "
                                     "(256 bytes): cannot check it (File name too long); give a shorter path")


@needs_glue
def test_bitfit_on_a_bias_free_model_and_the_layernorm_set_at_start(tmp_path):
    """A tiny ModernBERT folder (no biases): BitFit is refused when the workflow starts, naming the
    key and the folder, and nothing is written; model.layernorm reaches every init job."""
    from test_families_workflow import save_tiny_encoder

    save_tiny_encoder(tmp_path / "encoder", "modernbert")
    model = {"model.name": "tiny-modernbert", "model.source": "folder", "model.location": str(tmp_path / "encoder")}
    proc = snakemake(tmp_path, write_config(tmp_path, model), "-n", "init")
    assert proc.returncode != 0
    assert re.search(r"methods: 'bitfit' selects nothing: the modernbert model in \S+encoder/config\.json has no "
                     r"biases outside its head; remove bitfit", proc.stdout + proc.stderr), proc.stderr[-3000:]
    assert not (tmp_path / "results").exists()
    both = ["output.LayerNorm", "attention.output.LayerNorm"]
    config = write_config(tmp_path, {**model, "methods": ["full", "layernorm", "random"], "stats.a": "random",
                                     "model.layernorm": both})
    proc = snakemake(tmp_path, config, "-n", "-p", "init")
    assert proc.returncode == 0, proc.stderr[-3000:]
    inits = re.findall(r"lnpeft init .*", proc.stdout)
    assert len(inits) == 2, proc.stdout[-3000:]
    assert all("--layernorm output.LayerNorm attention.output.LayerNorm >" in line for line in inits), inits
    bad = write_config(tmp_path, {**model, "methods": ["full"], "model.layernorm": ["intermediate.dense"]})
    proc = snakemake(tmp_path, bad, "-n", "init")
    assert proc.returncode != 0 and "'intermediate.dense' is not one of" in proc.stdout + proc.stderr


@needs_glue
def test_per_task_settings_reach_only_their_task(tmp_path):
    """per_task.stsb's caps, epochs, max length, grids and drift reach STS-B's jobs and no others'."""
    config = write_config(tmp_path, {"per_task": {"stsb": {
        "data": {"subsample": {"train": 48}},
        "training": {"epochs": 3, "max_length": 40},
        "learning_rates": {"peft": [1.0e-2, 3.0e-2], "full": [2.0e-5]},
        "fractions": {"learning_rates": [2.0e-2]},
        "drift": {"epochs": 2, "learning_rate": 3.0e-5},
        "fisher": {"max_samples": 16},
    }}})
    proc = snakemake(tmp_path, config, "-n", "-p", "data", "table2", "fig1", "fig2", "table1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    shell = [line.strip() for line in proc.stdout.splitlines() if " lnpeft " in line or line.startswith("lnpeft ")]

    def commands(pattern: str) -> list[str]:
        return [c for c in shell if re.search(pattern, c)]

    [stsb_data] = commands(r"prepare-data --task stsb ")
    [rte_data] = commands(r"prepare-data --task rte ")
    assert "--subsample-train 48" in stsb_data and "--subsample-train 32" in rte_data
    assert "--subsample-validation 24" in stsb_data  # keys not given keep their global value
    stsb_runs = commands(r"finetune(-pack)? .*--task stsb .*--out results/(runs|packs)/")
    rte_runs = commands(r"finetune(-pack)? .*--task rte .*--out results/(runs|packs)/|finetune-pack .*--task rte ")
    assert stsb_runs and rte_runs
    assert all("--epochs 3 " in c and "--max-length 40 " in c for c in commands(r"--task stsb .*--method full --lr 2e-05"))
    assert all("--epochs 1 " in c and "--max-length 32 " in c for c in commands(r"finetune .*--task rte "))
    lrs = {re.search(r"/stsb/[a-z-]+[0-9.]*/lr([0-9.e-]+)_seed0", c)[1]
           for c in commands(r"collect-run .*/stsb/") if re.search(r"/stsb/[a-z-]+[0-9.]*/lr", c)}
    assert lrs == {"0.01", "0.03", "0.02"}, lrs  # Table 2's PEFT grid and the fraction runs' own
    assert not commands(r"--task rte [^>]*lr=0\.01,") and not commands(r"/rte/[^ ]*/lr0\.01_")
    [drift] = commands(r"finetune .*--task stsb .*--save-model")
    assert "--lr 3e-05" in drift and "--epochs 2 " in drift and "--max-length 40 " in drift
    [fisher_stsb] = commands(r"lnpeft fisher .*data/stsb/")
    assert "--max-samples 16 " in fisher_stsb and "--max-length 40 " in fisher_stsb
    [fisher_rte] = commands(r"lnpeft fisher .*data/rte/")
    assert "--max-samples 32 " in fisher_rte


def test_per_task_of_a_task_not_trained_is_refused(tmp_path):
    config = yaml.safe_load((REPO / "tests" / "workflow" / "tiny" / "config.yaml").read_text())
    config["per_task"] = {"cola": {"training": {"epochs": 3}}}
    config["data"]["glue_dir"] = str(tmp_path)
    from lnpeft.plan.workflow_config import check_config

    with pytest.raises(ConfigError, match=r"per_task\.cola: 'cola' is not in tasks \(rte, stsb\); settings of a "
                                          r"task the run does not train would be silently unused"):
        check_config(config)


@needs_glue
def test_drift_fine_tune_uses_the_grids_optimiser_settings(tmp_path):
    """Figure 1's full fine-tune takes training.{warmup_ratio,weight_decay,max_grad_norm,compile} as
    every Table 2 run does (it used to run with the CLI's defaults whatever the config said)."""
    config = write_config(tmp_path, {"training.warmup_ratio": 0.1, "training.weight_decay": 0.01,
                                     "training.max_grad_norm": 0.5, "training.compile": False})
    proc = snakemake(tmp_path, config, "-n", "-p", "fig1", "table2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    drift = [line for line in proc.stdout.splitlines() if "--save-model" in line]
    assert len(drift) == 2  # rte, stsb
    for line in drift:
        assert "--warmup-ratio 0.1 --weight-decay 0.01 --max-grad-norm 0.5 --compile false " in line, line
    # and every grid run spells the boolean as the CLI wants it (`--compile False` was an argparse error)
    grid = [line for line in proc.stdout.splitlines() if "lnpeft finetune" in line and "--save-model" not in line]
    assert all("--compile false " in line for line in grid)
    # single runs pass Snakemake's attempt: a retry of a deterministic failure ends at once
    assert all("--attempt 1 " in line for line in drift + [g for g in grid if "finetune-pack" not in g])


@needs_glue
def test_one_fisher_per_task_through_the_first_seeds_init_serves_every_seed(tmp_path):
    """The choice documented in fisher.smk and the Figure 2/5 captions: each task's Fisher reads the
    init of seeds[0], and the Fisher-subset runs of every seed rank entries by the masks built from it."""
    config = write_config(tmp_path, {"seeds": [3, 1], "training.pack_size": 1})
    proc = snakemake(tmp_path, config, "-n", "-p", "fig2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    fisher = [line for line in lines if " lnpeft fisher " in line]
    assert len(fisher) == 2 and all("/seed3 " in line for line in fisher)  # rte and stsb, both through seed 3
    subsets = [line for line in lines if "lnpeft finetune " in line and "--method fisher" in line]
    seeds = {re.search(r"--seed (\d+)", line)[1] for line in subsets}
    masks = {re.search(r"--mask (\S+)", line)[1] for line in subsets if "--task rte" in line}
    assert seeds == {"3", "1"} and masks == {"results/masks/all-minilm-l6-v2/individual/rte.parquet"}


def test_deberta_with_packs_is_refused_before_any_job(tmp_path):
    """A DeBERTa pack used to fail in its GPU job (and be retried at 2x and 3x the time); now the
    workflow refuses it at start, from the folder's config.json."""
    from test_families_workflow import save_tiny_encoder

    from lnpeft.plan.workflow_config import check_model_supports_methods

    save_tiny_encoder(tmp_path / "encoder", "deberta-v2")
    config = {"model": {"name": "d", "source": "folder", "location": str(tmp_path / "encoder")},
              "methods": ["full", "layernorm"], "training": {"pack_size": 4}}
    with pytest.raises(ConfigError, match=r"training\.pack_size: 4, but the deberta-v2 model in \S+encoder/config"
                                          r"\.json cannot be packed .*; set training\.pack_size: 1"):
        check_model_supports_methods(config)
    check_model_supports_methods({**config, "training": {"pack_size": 1}})  # one job per run: fine


BF16 = {"model": {"dtype": "bfloat16"}, "methods": ["bitfit", "layernorm", "random"], "drift": {"activate": False},
        "training": {"recipe": "gpu"}}


@pytest.mark.parametrize("change, message", [
    ({"methods": ["full", "layernorm"]}, r"methods: 'full' with model\.dtype: bfloat16: full fine-tuning trains every "
                                         r"weight, which bfloat16 holds frozen; remove full from methods"),
    ({"drift": {"activate": True}}, r"drift\.activate: true with model\.dtype: bfloat16: Figure 1's drift is a full "
                                    r"fine-tune, .*; set drift\.activate: false"),
    ({"drift": {}}, r"drift\.activate: true with model\.dtype: bfloat16"),  # the schema's default
    ({"training": {"recipe": "fp32"}}, r"training\.recipe: fp32 with model\.dtype: bfloat16: bfloat16 weights are "
                                       r"computed under bf16 autocast; set training\.recipe: gpu"),
])
def test_bf16_weights_refuse_full_fine_tuning_drift_and_the_fp32_recipe(change, message):
    from lnpeft.plan.workflow_config import check_weight_dtype

    check_weight_dtype({**BF16, "model": {}})  # float32 by default: anything goes
    check_weight_dtype(BF16)
    for recipe in ("auto", "bf16", "gpu"):  # auto and bf16 are checked where the run resolves them
        check_weight_dtype({**BF16, "training": {"recipe": recipe}})
    with pytest.raises(ConfigError, match=message):
        check_weight_dtype({**BF16, **change})


@needs_glue
def test_bf16_weights_reach_every_run_and_drift_activate_false_leaves_figure_1_out(tmp_path):
    overrides = {"model.dtype": "bfloat16", "methods": ["bitfit", "layernorm", "random"], "drift.activate": False,
                 "training.recipe": "gpu"}
    proc = snakemake(tmp_path, write_config(tmp_path, overrides), "-n", "-p")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [line for line in proc.stdout.splitlines() if re.search(r"lnpeft finetune(-pack)? ", line)]
    assert runs and all(" --dtype bfloat16 " in line for line in runs)
    assert "--save-model" not in proc.stdout and "fig1_drift" not in proc.stdout and "compute_drift" not in proc.stdout
    proc = snakemake(tmp_path, write_config(tmp_path, {**overrides, "methods": ["full", "layernorm"]}), "-n")
    assert proc.returncode != 0 and "methods: 'full' with model.dtype: bfloat16" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
