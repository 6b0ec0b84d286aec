"""`lnpeft collect-run`: put one run of a pack at its results/runs/ path, or fail with its message.

A pack job trains its runs in folders of their own under results/packs/ (Snakemake deletes the
declared outputs of a job before running it, and of a failed job after: a pack cannot declare its
runs' files without losing the finished runs when one member fails). This step, one per run,
hard-links (else copies) the four run files (three where the run saved no state) into the run
folder, epochs.parquet last, each atomically; a run that failed in its pack fails here, with the
message its pack recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

RUN_FILES = ("predictions.parquet", "state.safetensors", "run.json", "epochs.parquet")
"""In the order they are published: epochs.parquet, the completion marker, last."""


class RunFailedError(RuntimeError):
    """The run failed inside its pack (non-finite loss): its message, and where it was recorded."""


def _publish(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def run_files(staged: Path) -> tuple[str, ...]:
    """The files a finished run has: without state.safetensors where its run.json says it saved none."""
    info = staged / "run.json"
    if info.is_file() and json.loads(info.read_text())["options"].get("save_state", True) is False:
        return tuple(n for n in RUN_FILES if n != "state.safetensors")
    return RUN_FILES


def collect(staged: Path | str, out: Path | str) -> None:
    staged, out = Path(staged), Path(out)
    failed = staged / "failed.json"
    if failed.exists():
        info = json.loads(failed.read_text())
        raise RunFailedError(f"{info['message']} (recorded in {failed} by its pack job)")
    names = run_files(staged)
    missing = [name for name in names if not (staged / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{staged}: no {', '.join(missing)}: its pack job did not finish this run; "
                                "rerun the pack (Snakemake does when its status file is missing)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "epochs.parquet").unlink(missing_ok=True)  # incomplete until every file is in place
    (out / "state.safetensors").unlink(missing_ok=True)  # an earlier run's, if this one saved none
    for name in names:
        _publish(staged / name, out / name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--staged", required=True, type=Path, help="the run's folder in its pack")
    parser.add_argument("--out", required=True, type=Path, help="results/runs/{model}/{task}/{method}/lr{lr}_seed{seed}")


def run(args: argparse.Namespace) -> int:
    collect(args.staged, args.out)
    print(f"{args.staged} -> {args.out}")
    return 0
