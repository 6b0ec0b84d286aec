"""Pack membership (lnpeft.plan.pack_plan) against a brute-force listing of the grid, and what a config
change re-packs; collect-run publishes a packed run or fails with its message."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml

from lnpeft import cli
from lnpeft.plan.config_file import load_config
from lnpeft.plan.pack_plan import plan_packs
from lnpeft.train.collect_run import RUN_FILES, RunFailedError, collect

REPO = Path(__file__).resolve().parents[1]


def paper(**training) -> dict:
    config = load_config([REPO / "config.yaml"])
    config["training"].update(training)
    return config


def brute_force_peft_runs(config: dict) -> set[tuple]:
    """Every parameter-efficient run of the config, listed the way common.smk's targets list them."""
    runs = set()
    for task, method, seed in itertools.product(config["tasks"], config["methods"], config["seeds"]):
        if method != "full":
            for lr in config["learning_rates"].get(method) or config["learning_rates"]["peft"]:
                runs.add((task, seed, f"{lr:g}", method))
    fr = config["fractions"]
    for task, scheme, value, lr, seed in itertools.product(config["tasks"], fr["schemes"], fr["values"],
                                                           fr["learning_rates"], config["seeds"]):
        runs.add((task, seed, f"{lr:g}", f"fisher-{scheme}-f{value:g}"))
    return runs


@pytest.mark.parametrize("size", [2, 5, 14, 16, 27, 100])
def test_every_run_is_in_exactly_one_pack_of_its_task_seed_and_lr(size):
    config = paper(pack_size=size)
    packs = plan_packs(config, config["tasks"])
    listed = [(p.task, p.seed, p.lr, m.name) for p in packs for m in p.members]
    assert len(listed) == len(set(listed))
    assert set(listed) == brute_force_peft_runs(config)
    assert all(1 <= len(p.members) <= size for p in packs)
    for p in packs:  # one stage per pack, and the method each member's name says
        assert {m.method == "fisher" for m in p.members} == {p.stage == "fractions"}
    # near-equal sizes within a group
    groups = {}
    for p in packs:
        groups.setdefault((p.task, p.seed, p.lr, p.stage), []).append(len(p.members))
    assert all(max(v) - min(v) <= 1 for v in groups.values())


def test_paper_config_has_at_most_150_gpu_jobs_with_the_default_pack_size():
    config = load_config([REPO / "config.yaml"])
    packs = plan_packs(config, config["tasks"])
    full = len(config["tasks"]) * len(config["learning_rates"]["full"]) * len(config["seeds"])
    drift_and_fisher = 2 * len(config["tasks"])
    assert config["training"]["pack_size"] == 16
    assert (len(packs), full + len(packs) + drift_and_fisher) == (96, 144)


def test_pack_size_one_packs_nothing():
    assert plan_packs(paper(pack_size=1), ["sst2"]) == []


def test_adding_a_learning_rate_leaves_every_existing_pack_as_it_was():
    before = plan_packs(paper(pack_size=16), ["sst2", "rte"])
    more = paper(pack_size=16)
    more["learning_rates"]["peft"] = [*more["learning_rates"]["peft"], 2e-3]
    more["fractions"]["learning_rates"] = [*more["fractions"]["learning_rates"], 2e-3]
    after = plan_packs(more, ["sst2", "rte"])
    assert set(before) < set(after)
    assert {p.lr for p in set(after) - set(before)} == {"0.002"}


def test_packs_are_the_same_for_the_same_config():
    assert plan_packs(paper(pack_size=7), ["cola", "mnli"]) == plan_packs(paper(pack_size=7), ["cola", "mnli"])


def _staged(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, name in enumerate(RUN_FILES):
        (folder / name).write_bytes(bytes([i]) * 10)
    (folder / "run.json").write_text(json.dumps({"options": {"method": folder.name}}))  # saved its state
    return folder


def test_collect_publishes_every_file_and_links_not_copies(tmp_path):
    staged = _staged(tmp_path / "packs" / "layernorm")
    out = tmp_path / "runs" / "layernorm" / "lr0.001_seed0"
    assert cli.main(["collect-run", "--staged", str(staged), "--out", str(out)]) == 0
    for name in RUN_FILES:
        assert (out / name).read_bytes() == (staged / name).read_bytes()
        assert (out / name).stat().st_ino == (staged / name).stat().st_ino
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)  # no temporary file left


def test_collect_of_a_failed_run_fails_with_its_message(tmp_path, capsys):
    staged = tmp_path / "layernorm"
    staged.mkdir()
    message = "run sst2/layernorm/lr1e+30_seed0 (x): loss is nan at epoch 1, step 2; lower --lr or check the data"
    (staged / "failed.json").write_text(json.dumps({"run": "r", "error": "NonFiniteLossError", "message": message}))
    with pytest.raises(RunFailedError, match=r"loss is nan at epoch 1, step 2; lower --lr .*recorded in .*failed\.json"):
        collect(staged, tmp_path / "out")
    assert cli.main(["collect-run", "--staged", str(staged), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "epochs.parquet").exists()


def test_collect_of_an_unfinished_run_names_the_missing_files(tmp_path):
    staged = _staged(tmp_path / "bitfit")
    (staged / "epochs.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"bitfit: no epochs\.parquet: its pack job did not finish"):
        collect(staged, tmp_path / "out")


def test_schema_rejects_pack_size_zero(tmp_path):
    from lnpeft.plan.workflow_config import check_schema

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["training"]["pack_size"] = 0
    with pytest.raises(ValueError, match="pack_size"):
        check_schema(config, REPO / "workflow" / "schemas" / "config.schema.yaml")


def test_a_run_path_outside_the_packs_is_a_clear_error(tmp_path):
    """Packed, a parameter-efficient run exists only as a member of a planned pack: asking for
    another learning rate by hand names the run and the two ways out, instead of a bare KeyError."""
    from test_workflow import needs_glue, snakemake, write_config

    if needs_glue.args[0]:
        pytest.skip(needs_glue.kwargs["reason"])
    config = write_config(tmp_path, {"training.pack_size": 4})
    target = "results/runs/all-minilm-l6-v2/rte/layernorm/lr0.5_seed0/epochs.parquet"
    proc = snakemake(tmp_path, config, "-n", target)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "run layernorm of rte lr 0.5 seed 0 is not among the runs that the config's packs train" in out, out[-3000:]
    assert "set training.pack_size: 1" in out and "KeyError" not in out
    planned = "results/runs/all-minilm-l6-v2/rte/layernorm/lr0.003_seed0/epochs.parquet"
    assert snakemake(tmp_path, config, "-n", planned).returncode == 0
