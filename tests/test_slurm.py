"""The tiny workflow through real sbatch jobs on a throw-away single-node SLURM.

tests/slurm/local-slurm.sh installs (when missing) and starts munge, slurmctld and slurmd, runs
Snakemake with profiles/slurm-ci, then stops every daemon it started. The outputs must equal
those of a local run of the same config, and every non-local job must have been a SLURM job.
Needs root (CI runs as root); `make test-e2e` runs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# slow too, so that `make test` (-m "not slow ...") leaves it to `make test-e2e` (-m "slow or slurm")
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "workflow" / "tiny" / "config.yaml"
LOCAL_SLURM = REPO / "tests" / "slurm" / "local-slurm.sh"
# What the SLURM run builds: named targets and files of the tiny config; extend as stages land.
# One Fisher and one packed fine-tuning run put GPU rules (run on CPU by the CI profile) through
# sbatch; the run's collect_run is a localrule.
TARGETS = [
    "data",
    "pretrained",
    "init",
    "results/fisher/all-minilm-l6-v2/rte.parquet",
    "results/runs/all-minilm-l6-v2/rte/layernorm/lr0.003_seed0/epochs.parquet",
]
# Hard limits: the Snakemake run inside the cluster, and the whole script around it.
RUN_TIMEOUT_S = 1200
SCRIPT_TIMEOUT_S = RUN_TIMEOUT_S + 300  # + package installation, daemon start and stop
# results/ folders that differ between runs by nature (wall-clock times, host names)
VOLATILE_DIRS = ("logs", "benchmarks")
VOLATILE_COLUMNS = ("seconds",)  # epochs.parquet: wall-clock seconds per epoch


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # the tiny config may name glue_dir: auto; the shared copy is the one to find
    if "LNPEFT_GLUE_DIR" not in env and (REPO.parent / "shared" / "glue").is_dir():
        env["LNPEFT_GLUE_DIR"] = str(REPO.parent / "shared" / "glue")
    return env


def _snakemake(profile: str) -> list[str]:
    return [
        str(Path(sys.executable).parent / "snakemake"),
        *TARGETS,  # before --configfile, which takes several values
        "-s", str(REPO / "Snakefile"),
        "--profile", str(REPO / "profiles" / profile),
        "--configfile", str(TINY_CONFIG),
    ]


def _results(root: Path) -> dict[str, Path]:
    files = {}
    for path in sorted((root / "results").rglob("*")):
        rel = path.relative_to(root / "results")
        if path.is_file() and rel.parts[0] not in VOLATILE_DIRS:
            files[rel.as_posix()] = path
    return files


def _assert_same_file(rel: str, a: Path, b: Path) -> None:
    if a.suffix == ".parquet":
        frames = [pd.read_parquet(p) for p in (a, b)]
        frames = [f.drop(columns=[c for c in VOLATILE_COLUMNS if c in f.columns]) for f in frames]
        pd.testing.assert_frame_equal(*frames, obj=rel)
    elif a.suffix == ".json":
        assert json.loads(a.read_text()) == json.loads(b.read_text()), rel
    else:
        assert a.read_bytes() == b.read_bytes(), f"{rel} differs between the local and the SLURM run"


def _run_bounded(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    """Run cmd; past `timeout` send SIGTERM (Snakemake cancels its jobs, local-slurm.sh's trap
    stops the daemons it started), and SIGKILL only if it is still there a minute later."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:2])} ran past {timeout}s and was stopped:\n{(out + err)[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def prerequisites() -> None:
    if not TINY_CONFIG.is_file():
        pytest.skip(f"{TINY_CONFIG.relative_to(REPO)} does not exist yet (the tiny workflow config)")
    if "LNPEFT_GLUE_DIR" not in _env():
        pytest.skip("no local GLUE copy (<repo>/../shared/glue or $LNPEFT_GLUE_DIR)")
    if os.geteuid() != 0:
        pytest.skip("needs root: local-slurm.sh installs SLURM with apt-get and runs slurmd as root")
    if shutil.which("slurmd") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and apt-get is not available to install it")


@pytest.mark.timeout(RUN_TIMEOUT_S + SCRIPT_TIMEOUT_S + 300)  # after our own limits, which stop the daemons
def test_tiny_workflow_on_local_slurm_equals_local_run(prerequisites: None, tmp_path: Path) -> None:
    env = _env()
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    cluster.mkdir()

    run = _run_bounded([*_snakemake("local"), "--cores", "2"], local, env, RUN_TIMEOUT_S)
    assert run.returncode == 0, f"local run failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"

    env["LOCAL_SLURM_TIMEOUT"] = str(RUN_TIMEOUT_S)
    run = _run_bounded(["bash", str(LOCAL_SLURM), *_snakemake("slurm-ci")], cluster, env, SCRIPT_TIMEOUT_S)
    log = run.stdout + run.stderr
    if run.returncode == 3:
        pytest.skip(f"apt-get could not install the SLURM packages:\n{log[-2000:]}")
    assert run.returncode == 0, f"SLURM run failed (rc {run.returncode}):\n{log[-8000:]}"

    # sbatch really ran the jobs: one "submitted with SLURM jobid" line and one kept SLURM log
    # per job that is not a localrule
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))
    assert submitted, f"no job was submitted with sbatch:\n{log[-4000:]}"
    slurm_logs = sorted((cluster / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in slurm_logs} == set(submitted.values())
    assert "Falling back to 'sacct'" not in log  # the CI profile's squeue status checks held
    ran = re.findall(r"^rule (\w+):", run.stdout + run.stderr, flags=re.M)
    assert len(submitted) == len(ran), f"{len(ran)} non-local jobs, {len(submitted)} sbatch jobs"
    # GPU rules too (on CPU here): the LayerNorm run trains in a pack (config.yaml's pack_size)
    assert {"init_model", "compute_fisher", "train_pack"} <= set(ran)

    # same outputs as the local run: every file, parquet compared as tables, the rest exactly
    expected, got = _results(local), _results(cluster)
    assert expected, "the local run wrote nothing under results/"
    assert sorted(got) == sorted(expected)
    for rel, path in expected.items():
        _assert_same_file(rel, path, got[rel])
    print(f"{len(submitted)} sbatch jobs; {len(expected)} result files equal to the local run")
