"""Execution profiles and the conda env: they parse, GPUs go to exactly the GPU rules, the paper
config's dry run has the job counts that the config implies, and envs/ pins what pyproject pins."""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import yaml
from snakemake.cli import get_profile_dir
from snakemake.profiles import ProfileConfigFileParser
from test_faults import MULTI_THREADED_RULES

from lnpeft.plan.config_file import load_config
from lnpeft.plan.workflow_config import fraction_seeds, method_learning_rates
from lnpeft.report.progress import planned_runs

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "profiles"
GPU_RULES = {"finetune", "train_pack", "finetune_for_drift", "compute_fisher"}
"""The GPU rules of a packed config (training.pack_size > 1, config.yaml's default); with pack_size 1
finetune_fisher_subset takes train_pack's place."""


def parse_profile(name: str) -> dict:
    """The profile as Snakemake reads it (yte, then the key=value flattening)."""
    path = PROFILES / name / "config.yaml"
    with open(path) as stream:
        return dict(ProfileConfigFileParser().parse(stream))


def raw_profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def set_resources(profile: dict) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for entry in profile.get("set-resources", []):
        rule, assign = entry.split(":", 1)
        key, value = assign.split("=", 1)
        out.setdefault(rule, {})[key] = value
    return out


# ---------------------------------------------------------------- profiles


@pytest.mark.parametrize("name", ["local", "slurm", "slurm-ci"])
def test_profile_parses(name: str) -> None:
    parsed = parse_profile(name)
    assert parsed["rerun-incomplete"] == "True"  # a killed job's outputs are rebuilt (resume)


def test_slurm_profile_production_settings() -> None:
    prof = parse_profile("slurm")
    assert prof["executor"] == "slurm"
    # the plugin's default status checking (sacct): squeue-only is for the CI cluster
    assert not any(key.startswith("slurm-status") for key in prof)
    assert prof["slurm-requeue"] == "True" and int(prof["retries"]) >= 1
    defaults = dict(entry.split("=", 1) for entry in prof["default-resources"])
    assert defaults["slurm_account"] == "YOUR_ACCOUNT"
    assert defaults["slurm_partition"] == "YOUR_CPU_PARTITION"
    assert "gpu" not in defaults
    per_rule = set_resources(prof)
    # the GPU rules of both DAGs: packed, and one job per run (training.pack_size 1)
    gpu_rules = GPU_RULES | {"finetune_fisher_subset"}
    assert {rule for rule, res in per_rule.items() if int(res.get("gpu", 0)) > 0} == gpu_rules
    for rule in gpu_rules:
        assert per_rule[rule]["gpu"] == "1"
        assert per_rule[rule]["slurm_partition"] == "YOUR_GPU_PARTITION"
        # runtime and mem_mb stay with the rules, whose functions grow with `attempt`
        assert "runtime" not in per_rule[rule] and "mem_mb" not in per_rule[rule]


def test_sacct_less_status_checking_only_in_ci_profile() -> None:
    with_status = {p.parent.name for p in PROFILES.glob("*/config.yaml") if "slurm-status-command" in raw_profile(p.parent.name)}
    assert with_status == {"slurm-ci"}
    ci = parse_profile("slurm-ci")
    assert ci["slurm-status-command"] == "squeue"
    # the plugin trusts squeue only while MinJobAge >= 3 x the first status-check delay
    script = (REPO / "tests" / "slurm" / "local-slurm.sh").read_text()
    min_job_age = int(re.search(r"^MinJobAge=(\d+)$", script, flags=re.M).group(1))
    assert 3 * int(ci["slurm-init-seconds-before-status-checks"]) <= min_job_age
    # no GPUs on the CI node
    per_rule = set_resources(ci)
    assert all(int(per_rule[rule]["gpu"]) == 0 for rule in GPU_RULES)


def test_profile_name_slurm_resolves_from_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """`snakemake --profile slurm` (the user's words) finds profiles/slurm via the ./slurm link."""
    monkeypatch.chdir(REPO)
    profile_dir, config_file = get_profile_dir("slurm")
    assert config_file.resolve() == (PROFILES / "slurm" / "config.yaml").resolve()


# ---------------------------------------------------------------- conda env


def _canonical(name: str) -> str:
    name = re.sub(r"[-_.]+", "-", name).lower()
    return {"pytorch": "torch"}.get(name, name)  # conda-forge's name for the PyPI package


def _pins(specs: list[str]) -> dict[str, str]:
    pins = {}
    for spec in specs:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;]+)\s*", spec)
        assert match, f"not an exact pin: {spec!r}"
        pins[_canonical(match.group(1))] = match.group(2)
    return pins


def test_conda_env_pins_equal_pyproject() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    expected = _pins(pyproject["project"]["dependencies"])
    env = yaml.safe_load((REPO / "envs" / "lnpeft.yaml").read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep["pip"]
        elif dep.split("=")[0] not in ("python", "pip"):  # the interpreter and its installer
            conda.append(dep)
    assert any(d.startswith("python=3.11") for d in env["dependencies"] if isinstance(d, str))
    conda_pins, pip_pins = _pins(conda), _pins(pip)
    assert not set(conda_pins) & set(pip_pins), "a package pinned twice"
    assert {**conda_pins, **pip_pins} == expected


def test_conda_env_post_deploy_installs_the_repo(tmp_path: Path) -> None:
    """The post-deploy script refuses a directory that is not this repository (clear message)."""
    script = REPO / "envs" / "lnpeft.post-deploy.sh"
    assert os.access(script, os.X_OK)
    run = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "LNPEFT_REPO": str(tmp_path)})
    assert run.returncode == 1 and "LNPEFT_REPO" in run.stderr


# ---------------------------------------------------------------- the paper's dry run


def expected_counts(config: dict) -> dict[str, int]:
    """Jobs per rule that config.yaml implies for `all` (GPU rules and the per-task set-up), counted
    from the config values: packs are ceil(runs / pack_size) per (task, seed, lr) and stage."""
    tasks, seeds = len(config["tasks"]), len(config["seeds"])
    frac = config["fractions"]
    size = config["training"].get("pack_size", 1)
    peft = [m for m in config["methods"] if m != "full"]
    lrs = {f"{lr:g}" for m in peft for lr in method_learning_rates(config, m)}
    grid_packs = sum(math.ceil(sum(f"{lr}" in {f"{x:g}" for x in method_learning_rates(config, m)} for m in peft) / size)
                     for lr in lrs)
    fraction_runs = len(frac["schemes"]) * len(frac["values"])
    # data: one job per task, plus WNLI (the submission's 11 files) and AX (predicted by MNLI)
    data_tasks = set(config["tasks"]) | {"wnli"} | ({"ax"} if "mnli" in config["tasks"] else set())
    counts = {
        "prepare_glue*": len(data_tasks),  # prepare_glue, or its MNLI/AX variants
        "cache_checkpoint": 1,
        "init_model": tasks * seeds,
        "finetune_for_drift": tasks,
        "compute_fisher": tasks,
    }
    full = len(method_learning_rates(config, "full")) if "full" in config["methods"] else 0
    peft_runs = sum(len(method_learning_rates(config, m)) for m in peft)
    n_fraction = tasks * fraction_runs * len(frac["learning_rates"]) * len(fraction_seeds(config))
    if size == 1:
        return counts | {"finetune": tasks * (full + peft_runs) * seeds, "finetune_fisher_subset": n_fraction}
    packs = (tasks * seeds * grid_packs
             + tasks * len(fraction_seeds(config)) * len(frac["learning_rates"]) * math.ceil(fraction_runs / size))
    return counts | {"finetune": tasks * full * seeds, "train_pack": packs,
                     "collect_run": tasks * peft_runs * seeds + n_fraction}


def dry_run(tmp_path: Path, profile: str, configfile: Path, target: str = "all") -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if "LNPEFT_GLUE_DIR" not in env and (REPO.parent / "shared" / "glue").is_dir():
        env["LNPEFT_GLUE_DIR"] = str(REPO.parent / "shared" / "glue")  # for glue_dir: auto
    run = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile"),
         "--profile", str(PROFILES / profile), "--configfile", str(configfile), "-n", target],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout + run.stderr


def job_table(log: str) -> dict[str, int]:
    table = log.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in table.splitlines()[3:]]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[0] != "total"}


def _pairs(block: str, key: str) -> dict[str, str]:
    line = re.search(rf"^\s+{key}: (.*)$", block, flags=re.M)
    return dict(kv.split("=", 1) for kv in line.group(1).split(", ")) if line else {}


def job_resources(log: str, with_wildcards: bool = False) -> list[tuple]:
    """(rule, resources[, wildcards]) of every job block of a dry run."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", log):
        rule = re.search(r"^(?:local)?rule (\w+):", block, flags=re.M)
        if rule:
            job = (rule.group(1), _pairs(block, "resources"))
            jobs.append(job + (_pairs(block, "wildcards"),) if with_wildcards else job)
    return jobs


def _local_rules() -> set[str]:
    """Rules that run on the login node: the `localrules:` of the Snakefile and rule files (at any
    indentation: a rule file may define rules inside `if`), `localrule: True` (a `use rule ... as X
    with:` inherits it). A dry run does not print which ones they are."""
    texts = [(REPO / "Snakefile").read_text()] + [p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk")]
    local = set()
    for text in texts:
        for block in re.findall(r"^[ \t]*localrules:\n((?:[ \t]+\w+,?\n)+)", text, flags=re.M):
            local |= set(re.findall(r"\w+", block))
    text = "\n".join(texts[1:])
    for indent, rule, body in re.findall(r"^( *)rule (\w+):\n(.*?)(?=^\1\S|\Z)", text, flags=re.M | re.S):
        if re.search(r"^\s+localrule: True", body, flags=re.M):
            local.add(rule)
    for child, parent in re.findall(r"^\s*use rule (\w+) as (\w+) with:", text, flags=re.M):
        if child in local:
            local.add(parent)
    return local


def _workflow_rules() -> set[str]:
    text = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    return set(re.findall(r"^\s*rule (\w+):", text, flags=re.M))


def _make_snakemake_commands(target: str, *variables: str) -> list[list[str]]:
    """The argument lists of the snakemake commands that `make -n TARGET` prints."""
    printed = subprocess.run(["make", "-n", target, *variables], cwd=REPO, capture_output=True, text=True, check=True).stdout
    commands = []
    for line in printed.replace("\\\n", " ").splitlines():  # a recipe line continued with a backslash
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        while any(w.endswith("/snakemake") for w in words):
            start = next(i for i, w in enumerate(words) if w.endswith("/snakemake")) + 1
            end = next((i for i in range(start, len(words)) if words[i] in {"&&", ";", "||"}), len(words))
            commands.append(words[start:end])
            words = words[end:]
    return commands


@pytest.mark.parametrize("target, expected", [
    ("demo", [["all"]]),
    ("reproduce", [["data", "init"], ["all"]]),
])
def test_make_targets_reach_snakemake_as_targets(target: str, expected: list[list[str]]) -> None:
    """--configfile and --set-threads take every word after them: a target written after them is
    read as a config file or a thread count, and snakemake stops before it starts."""
    from snakemake.cli import get_argument_parser

    commands = _make_snakemake_commands(target, "REPRO=configs/minilm-long.yaml", "EVIDENCE=evidence/minilm-long")
    parsed = [get_argument_parser().parse_args(argv) for argv in commands]
    assert [args.targets for args in parsed] == expected
    for args in parsed:
        assert set(args.set_threads) == set(MULTI_THREADED_RULES)
        assert all(threads == 1 for threads in args.set_threads.values())


def test_paper_dry_run_job_counts_and_gpu_rules(tmp_path: Path) -> None:
    missing = GPU_RULES - _workflow_rules()
    if missing:
        pytest.skip(f"rules not written yet: {sorted(missing)}")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    log = dry_run(tmp_path, "slurm", REPO / "config.yaml")
    counts = job_table(log)
    for rule, n in expected_counts(config).items():
        got = sum(c for r, c in counts.items() if r == rule or (rule.endswith("*") and r.startswith(rule[:-1])))
        assert got == n, (rule, counts)
    jobs = job_resources(log, with_wildcards=True)
    assert sum(counts.values()) == len(jobs)
    gpu_jobs = Counter(rule for rule, res, _ in jobs if int(res.get("gpu", 0)) > 0)
    assert set(gpu_jobs) == GPU_RULES
    assert all(gpu_jobs[r] == counts[r] for r in GPU_RULES)  # every job of a GPU rule, none else
    runtime: dict[tuple[str, ...], set[int]] = {}
    for rule, res, wc in jobs:
        if rule in GPU_RULES:
            assert res["slurm_partition"] == "YOUR_GPU_PARTITION" and res["cpus_per_gpu"] == "4"
            assert int(res["mem_mb"]) == 32000  # gpu_mem_mb at attempt 1
            key = (rule, wc["task"]) + ((wc["pack"],) if rule == "train_pack" else ())  # packs differ in size
            runtime.setdefault(key, set()).add(int(res["runtime"]))
        else:
            assert res["slurm_partition"] == "YOUR_CPU_PARTITION" and "cpus_per_gpu" not in res
    # network only on the login node: downloads (and collect_run, which links files) are the only
    # localrules with a command, and every SLURM job that loads a model or tokenizer runs with the
    # hub switched off
    blocks = [b for b in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", log) if re.search(r"^(?:local)?rule ", b, flags=re.M)]
    local_rules, local_with_shell = _local_rules(), set()
    for block in blocks:
        rule = re.search(r"^(?:local)?rule (\w+):", block, flags=re.M).group(1)
        shell = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        if shell is None or shell.group(1) == "None":
            continue
        if rule in local_rules:
            local_with_shell.add(rule)
        elif re.search(r"\blnpeft (init|finetune|fisher|drift)\b", shell.group(1)):  # they load models
            assert "HF_HUB_OFFLINE=1" in shell.group(1) and "HF_DATASETS_OFFLINE=1" in shell.group(1), block
    assert local_with_shell == {"prepare_glue", "prepare_glue_mnli", "prepare_glue_ax", "cache_checkpoint",
                                "collect_run"}
    # runtimes come from the rules' functions: one per (rule, task[, pack]), growing with the train set
    assert all(len(v) == 1 for v in runtime.values())
    minutes = {key: v.pop() for key, v in runtime.items()}
    for rule in GPU_RULES:
        at = (lambda task: (rule, task, "grid-p0")) if rule == "train_pack" else (lambda task: (rule, task))
        assert minutes[at("mnli")] > minutes[at("sst2")] > minutes[at("rte")] >= 10
    # RTE, 20 epochs: 2490 train rows at 150/s, 277 dev + 3000 test rows at 600/s, + 15 min; a pack
    # of 3 runs: 3 such runs with one start-up, of 14 or 13 Fisher subsets: 14 or 13
    epoch_min = 20 * (2490 / 150 + 3277 / 600) / 60
    assert minutes["finetune", "rte"] == int(15 + epoch_min) == 22
    assert minutes["train_pack", "rte", "grid-p0"] == int(15 + 3 * epoch_min) == 37
    assert minutes["train_pack", "rte", "fractions-p0"] == int(15 + 14 * epoch_min)
    assert minutes["train_pack", "rte", "fractions-p1"] == int(15 + 13 * epoch_min)
    print("\n".join(f"{rule}\t{n}" for rule, n in counts.items()))


@pytest.mark.parametrize("name, table2_rates", [("minilm-converge", 2 + 3 + 4 + 4), ("minilm-long", 2 + 2 + 2 + 2)])
def test_reproduction_config_dry_run_job_counts(tmp_path: Path, name: str, table2_rates: int) -> None:
    """A reproduction config over config.yaml: 3 seeds for Table 2, seed 0 only for the fraction
    runs, one job per run (pack_size 1), each method's own learning-rate grid."""
    if not (os.environ.get("LNPEFT_GLUE_DIR") or (REPO.parent / "shared" / "glue").is_dir()):
        pytest.skip("no local GLUE copy (<repo>/../shared/glue or $LNPEFT_GLUE_DIR)")
    path = REPO / "configs" / f"{name}.yaml"
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for key, value in yaml.safe_load(path.read_text()).items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    counts = job_table(dry_run(tmp_path, "local", path))
    expected = expected_counts(config)
    assert expected["finetune"] == 5 * table2_rates * 3 and expected["finetune_fisher_subset"] == 5 * 3 * 4 * 1
    for rule, n in expected.items():
        got = sum(c for r, c in counts.items() if r == rule or (rule.endswith("*") and r.startswith(rule[:-1])))
        assert got == n, (rule, counts)
    # lnpeft progress plans the runs Snakemake schedules
    runs = planned_runs(load_config([REPO / "config.yaml", path]))
    assert (sum(not r.subset for r in runs), sum(r.subset for r in runs)) == (
        counts["finetune"], counts["finetune_fisher_subset"])


def test_ci_profile_dry_run_has_no_gpu_jobs(tmp_path: Path) -> None:
    """The tiny config through profiles/slurm-ci: no job asks for a GPU or more than 2 GB."""
    config = REPO / "tests" / "workflow" / "tiny" / "config.yaml"
    if not config.is_file():
        pytest.skip("tests/workflow/tiny/config.yaml does not exist yet")
    if not (os.environ.get("LNPEFT_GLUE_DIR") or (REPO.parent / "shared" / "glue").is_dir()):
        pytest.skip("no local GLUE copy (<repo>/../shared/glue or $LNPEFT_GLUE_DIR)")
    log = dry_run(tmp_path, "slurm-ci", config)
    jobs = job_resources(log)
    assert {rule for rule, _ in jobs} >= GPU_RULES
    assert all(int(res.get("gpu", 0)) == 0 for _, res in jobs)
    assert max(int(res["mem_mb"]) for _, res in jobs) <= 2000


def test_every_shell_rule_names_the_conda_env() -> None:
    """`--sdm conda` covers every job: each rule with a shell names envs/lnpeft.yaml."""
    missing = []
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = path.read_text()
        for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", text, flags=re.M | re.S):
            name, body = m.groups()
            if "shell:" in body and not re.search(r'conda:\s*\n\s*"\.\./\.\./envs/lnpeft\.yaml"', body):
                missing.append(f"{path.name}: rule {name}")
    assert not missing, f"rules without conda: \"../../envs/lnpeft.yaml\": {missing}"


def test_snakemake_lint_is_clean():
    """`snakemake --lint` (rule style, envvars, logs, ...) finds nothing; it exits 1 on any lint."""
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--lint"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefiles_are_snakefmt_formatted():
    """snakefmt (line length from pyproject's [tool.snakefmt]) would change nothing."""
    proc = subprocess.run([str(Path(sys.executable).parent / "snakefmt"), "--check", "Snakefile", "workflow/rules"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "\nrun: snakefmt Snakefile workflow/rules"


def test_copied_glue_files_rerun_nothing_changed_ones_rerun(tmp_path: Path) -> None:
    """The profiles' max-checksum-file-size: a re-synced glue_data/ (new mtimes, same bytes; SST-2's
    3.8 MB train file is past Snakemake's 1 MB default) reruns nothing; an edited file reruns its task."""
    import shutil

    from test_workflow import glue_dir, snakemake, write_config

    if glue_dir() is None:
        pytest.skip("no local GLUE copy")
    glue = tmp_path / "glue"
    shutil.copytree(glue_dir() / "SST-2", glue / "SST-2")
    config = write_config(tmp_path, {"tasks": ["sst2"], "data.glue_dir": str(glue)})
    local = ["--profile", str(PROFILES / "local")]
    assert snakemake(tmp_path, config, *local, "data").returncode == 0
    later = max(f.stat().st_mtime for f in (tmp_path / "results").rglob("*") if f.is_file()) + 60
    for f in (glue / "SST-2").iterdir():
        os.utime(f, (later, later))
    plan = snakemake(tmp_path, config, *local, "-n", "data")
    assert plan.returncode == 0 and "Nothing to be done" in plan.stdout + plan.stderr
    default = snakemake(tmp_path, config, "-n", "data")  # Snakemake's default threshold: it would rerun
    assert "prepare_glue" in default.stdout and "Updated input files" in default.stdout
    with open(glue / "SST-2" / "dev.tsv", "a") as f:
        f.write("an added sentence\t1\n")
    plan = snakemake(tmp_path, config, *local, "-n", "data")
    assert "prepare_glue" in plan.stdout and "SST-2/dev.tsv" in plan.stdout


def test_gpu_jobs_state_the_gpu_memory_of_their_pack(tmp_path):
    """A pack asks for the frozen model once plus each member's activations (a run alone: one), and
    full fine-tuning for its gradients and AdamW state too: a resource a profile maps to its
    cluster's GPU memory constraint."""
    from lnpeft.plan.config_file import load_config
    from lnpeft.plan.runtime import gpu_memory_mb

    log = dry_run(tmp_path, "slurm", REPO / "configs" / "demo.yaml", "all")  # the demo: packs of up to 5
    asked: dict[str, set[int]] = {}
    for rule, res in job_resources(log):
        if "gpu_memory_mb" in res:
            asked.setdefault(rule, set()).add(int(res["gpu_memory_mb"]))
    assert set(asked) == {"train_pack", "finetune", "finetune_for_drift", "compute_fisher"}
    config = load_config([REPO / "config.yaml", REPO / "configs" / "demo.yaml"])
    one, five = gpu_memory_mb(config, "sst2", 1), gpu_memory_mb(config, "sst2", 5)
    assert five > one and five in asked["train_pack"]
    assert max(asked["finetune"]) == gpu_memory_mb(config, "sst2", 1, full=True) > one
