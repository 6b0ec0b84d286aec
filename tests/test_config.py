"""A wrong config key or value stops the workflow before any job, with a message naming the key."""

from __future__ import annotations

import re

import pytest
from test_workflow import needs_glue, snakemake, write_config


@needs_glue
@pytest.mark.parametrize("overrides, message", [
    ({"training.epochs": 0}, r"0 is less than the minimum of 1.*\['training'\]\['epochs'\]"),
    ({"training.epochz": 3}, r"Additional properties are not allowed \('epochz' was unexpected\)"),
    ({"tasks": ["rte", "boolq"]}, r"'boolq' is not one of .*\['tasks'\]\[1\]"),
    ({"data.glue_dir": "/nonexistent/glue"}, r"data\.glue_dir: '/nonexistent/glue' is not a folder"),
    ({"stats.a": "full", "methods": ["bitfit", "layernorm"]}, r"stats\.a: method 'full' is not in methods"),
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


@pytest.mark.parametrize("overlay", [None, "configs/demo.yaml", "tests/workflow/tiny/config.yaml"])
def test_shipped_configs_pass_the_schema_check(overlay):
    """check_schema (run before validate() in common.smk) accepts every config the project ships."""
    from pathlib import Path

    import yaml

    from lnpeft.workflow_config import check_schema

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "config.yaml").read_text())
    if overlay:
        for key, value in yaml.safe_load((repo / overlay).read_text()).items():
            config[key] = {**config[key], **value} if isinstance(value, dict) else value
    check_schema(config, repo / "workflow" / "schemas" / "config.schema.yaml")
