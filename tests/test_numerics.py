"""Every compute stage pins what its CPU numbers depend on (lnpeft.numerics).

The workflow's determinism test once failed on the Fisher and drift outputs only: the two stages
that never pinned their threads, so MKL chose each product's threads itself (MKL_VERBOSE:
`Dyn:1`, a mix of `NThr:1` and `NThr:2`). These tests read MKL's own account of every call.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from test_faults import finetune_argv, tiny_run_inputs  # noqa: F401 (a fixture)

from lnpeft.numerics import REPRODUCIBLE_ENV, resolve_threads, set_reproducible_env

MKL = torch.backends.mkl.is_available()


def test_resolve_threads_prefers_the_flag_then_snakemakes_variable():
    assert resolve_threads(3, {"OMP_NUM_THREADS": "2"}) == 3
    assert resolve_threads(None, {"OMP_NUM_THREADS": "2"}) == 2
    assert resolve_threads(None, {}) == torch.get_num_threads()
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        resolve_threads(0, {})


def test_reproducible_env_keeps_a_users_own_choice():
    env = {"MKL_CBWR": "COMPATIBLE"}
    set_reproducible_env(env)
    assert env["MKL_CBWR"] == "COMPATIBLE"
    env = {}
    set_reproducible_env(env)
    assert env == REPRODUCIBLE_ENV


def mkl_calls(argv: list[str], threads_env: str = "2") -> list[str]:
    """MKL_VERBOSE's line for every MKL call of `lnpeft ARGV` run as a Snakemake job runs it."""
    env = {k: v for k, v in os.environ.items() if k not in REPRODUCIBLE_ENV}
    env.update({"MKL_VERBOSE": "1", "OMP_NUM_THREADS": threads_env, "MKL_NUM_THREADS": threads_env,
                "HF_HUB_OFFLINE": "1"})
    proc = subprocess.run([sys.executable, "-m", "lnpeft.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    calls = [line for line in proc.stdout.splitlines() if re.match(r"MKL_VERBOSE \w+\(", line)]
    assert calls, "MKL logged no call"
    return calls


@pytest.mark.skipif(not MKL, reason="torch is built without MKL")
@pytest.mark.parametrize("stage", ["fisher", "finetune"])
def test_every_mkl_call_runs_with_pinned_threads_and_cnr(stage, tiny_run_inputs, tmp_path):  # noqa: F811
    if stage == "fisher":
        argv = ["fisher", "--model", str(tiny_run_inputs["init"]), "--data", str(tiny_run_inputs["train"]),
                "--out", str(tmp_path / "f.parquet"), "--batch-size", "8", "--max-length", "32",
                "--max-samples", "16"]
    else:  # as finetune_for_drift ran it before: no --threads flag at all
        argv = finetune_argv(tiny_run_inputs, tmp_path / "run", epochs="1")
        argv = argv[:argv.index("--threads")] + argv[argv.index("--threads") + 2:]
    calls = mkl_calls(argv)
    settings = {re.search(r"CNR:\S+ Dyn:\d", c).group(0) for c in calls}
    assert settings == {"CNR:AUTO,STRICT Dyn:0"}, settings
    assert {re.search(r"NThr:\d+", c).group(0) for c in calls} == {"NThr:2"}
