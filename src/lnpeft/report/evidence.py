"""`lnpeft evidence`: a reproduction's results small enough to commit, and back into results/.

A grid that takes more CPU-hours than one sitting has, on machines whose disks do not last, keeps
what its finished jobs made in a folder under version control, and picks up from it:

  save     copies from results/ what the expensive jobs made (each finished run's epochs.parquet,
           predictions.parquet and run.json; drift, Fisher and mask parquet; the jobs' benchmarks,
           which give the write-up its CPU time) and the Snakemake logs of runs that started jobs (its
           wall time, failed runs included). Model weights stay out: state.safetensors, resume.pt,
           checkpoints and inits. The inputs the runs started from (the data splits and init folders
           their run.json names, the checkpoint's manifest) are regenerated, not kept: inputs.json
           records their sha256.
  restore  checks that results/ holds those very inputs (build them first: `snakemake data init`),
           then copies the evidence in, every file with one modification time, newer than the
           inputs: Snakemake counts the restored jobs as done. A restored run has no
           state.safetensors; with training.save_state: false (what such a grid should set) none
           is declared, with true Snakemake trains the run again only for a target asking for it.

Neither command overwrites a file that differs without saying so: save reports the files it
updated (a run trained again); restore refuses a file already in results/ that differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from lnpeft.data.artifacts import atomic_path, write_json
from lnpeft.errors import LnpeftError
from lnpeft.report.run_log import job_span

RUN_FILES = ("epochs.parquet", "predictions.parquet", "run.json")
"""A finished run's files the evidence keeps (epochs.parquet, the completion marker, among them)."""
KEPT = ("drift/*/*.parquet", "fisher/*/*.parquet", "masks/*/*/*.parquet", "benchmarks/**/*.tsv")
"""What the other expensive jobs made, and every job's benchmark (results/ relative globs)."""
CHECKPOINT_MANIFESTS = "checkpoints/*/MANIFEST.json"
"""With each kept run's data splits and init folder (its run.json), what the runs started from:
regenerated, recorded by sha256 in inputs.json."""
INPUT_RULES = ("prepare_glue", "cache_checkpoint", "init_model")
"""The rules that make the inputs: their benchmarks are those of the sitting that made the inputs again."""
LOGS = "snakemake-logs"
"""The evidence's folder of Snakemake logs (restored into .snakemake/log/ beside results/)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finished_run_files(results: Path) -> list[str]:
    """results/-relative paths of the kept files of every finished run (epochs.parquet there, no
    resume.pt: `lnpeft.train.run_state` writes epochs.parquet last and then removes resume.pt)."""
    found = []
    for epochs in sorted(results.glob("runs/*/*/*/*/epochs.parquet")):
        folder = epochs.parent
        if (folder / "resume.pt").exists() or not all((folder / n).is_file() for n in RUN_FILES):
            continue
        found += [(folder / n).relative_to(results).as_posix() for n in RUN_FILES]
    return found


def kept_files(results: Path) -> list[str]:
    other = sorted({p.relative_to(results).as_posix() for pattern in KEPT for p in results.glob(pattern)
                    if p.is_file() and not p.name.startswith(".")  # atomic writers' temporary files
                    and p.relative_to(results).parts[:2] not in {("benchmarks", r) for r in INPUT_RULES}})
    return finished_run_files(results) + other


def run_inputs(results: Path, run_json: Path) -> set[Path]:
    """The files a run started from, as its run.json names them: its data splits and every file of
    its init folder (paths relative to the folder holding results/, as the workflow gives them)."""
    options = json.loads(run_json.read_text())["options"]
    named = [options["train"], *options["dev"], *options["test"], options["init"]]
    paths = [Path(p) if Path(p).is_absolute() else results.parent / p for p in named]
    return {f for p in paths for f in ([p] if p.suffix else [q for q in p.glob("*") if q.is_file()])}


def input_hashes(results: Path, kept: list[str]) -> dict[str, str]:
    files = set(results.glob(CHECKPOINT_MANIFESTS))
    for rel in kept:
        if rel.endswith("/run.json"):
            files |= run_inputs(results, results / rel)
    hashes = {}
    for path in sorted(files):
        if not path.resolve().is_relative_to(results.resolve()):
            raise LnpeftError(f"{path}: an input of a kept run outside {results}; the evidence can only check "
                              "inputs the workflow rebuilds in its results/ folder")
        hashes[path.resolve().relative_to(results.resolve()).as_posix()] = _sha256(path)
    return hashes


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _same(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def save(results: Path, evidence: Path, logs: list[Path]) -> dict[str, int]:
    """Copy results/'s kept files and the Snakemake logs into `evidence`; record the inputs' sha256.
    Returns the counts of files added, updated and unchanged."""
    results, evidence = Path(results), Path(evidence)
    if not results.is_dir():
        raise LnpeftError(f"{results}: no such folder; give the workflow's results/ folder")
    kept = kept_files(results)
    hashes = input_hashes(results, kept)
    record = evidence / "inputs.json"
    if record.is_file():
        before = json.loads(record.read_text())["sha256"]
        differ = sorted(k for k in before.keys() & hashes.keys() if before[k] != hashes[k])
        if differ:
            raise LnpeftError(f"{results / differ[0]}: not the file the evidence in {evidence} was made from "
                              f"(sha256 differs from {record}; {len(differ)} such file(s)); its runs and these "
                              "would mix two starting points: save to a new folder")
        hashes = {**before, **hashes}
    counts = {"added": 0, "updated": 0, "unchanged": 0}
    pairs = [(results / rel, evidence / "results" / rel) for rel in kept]
    # every log whose run started jobs, failed ones too: the write-up sums their wall time
    pairs += [(log, evidence / LOGS / log.name) for log in logs if job_span(log.read_text())]
    for src, dst in pairs:
        state = "unchanged" if dst.is_file() and _same(src, dst) else "updated" if dst.is_file() else "added"
        if state != "unchanged":
            _copy(src, dst)
        counts[state] += 1
    write_json({"sha256": hashes}, record)
    return counts


def restore(evidence: Path, results: Path, log_dir: Path) -> dict[str, int]:
    """Copy the evidence into results/ (and its Snakemake logs into `log_dir`) once results/ holds
    the inputs it was made from. Returns the counts of files restored and already there."""
    evidence, results = Path(evidence), Path(results)
    record = evidence / "inputs.json"
    if not record.is_file():
        raise LnpeftError(f"{record}: missing; is {evidence} a folder `lnpeft evidence save` wrote?")
    recorded = json.loads(record.read_text())["sha256"]
    missing = sorted(rel for rel in recorded if not (results / rel).is_file())
    if missing:
        raise LnpeftError(f"{results / missing[0]}: missing ({len(missing)} input file(s) the evidence's runs "
                          "started from); build them first with the same config: snakemake data init "
                          "--configfile <the config>, then restore")
    differ = sorted(rel for rel, digest in recorded.items() if _sha256(results / rel) != digest)
    if differ:
        # the seeded head is drawn by torch's vectorised kernel on x86 with AVX2/AVX-512, a scalar one elsewhere
        cpu = ("; only inits differ, so perhaps a CPU whose torch kernels draw the seeded head differently "
               "(x86 with AVX2 or AVX-512 all agree; ARM and older x86 do not: docs/reproducibility.md)"
               if all(rel.startswith("init/") for rel in differ) else "")
        raise LnpeftError(f"{results / differ[0]}: differs from the file the evidence's runs started from "
                          f"(sha256 in {record}; {len(differ)} such file(s)): another config, data or package "
                          f"version{cpu}; restoring would pass off runs of other inputs as these")
    pairs = [(p, results / p.relative_to(evidence / "results"))
             for p in sorted((evidence / "results").glob("**/*")) if p.is_file()]
    pairs += [(p, log_dir / p.name) for p in sorted((evidence / LOGS).glob("*.log"))]
    clash = [dst for src, dst in pairs if dst.is_file() and not _same(src, dst)]
    if clash:
        raise LnpeftError(f"{clash[0]}: already there and different from the evidence's copy ({len(clash)} such "
                          "file(s)); nothing was restored. Restore into a results/ folder without these runs, "
                          "or save this one's runs first (lnpeft evidence save)")
    now = time.time()  # one time for every file: no restored output looks older than a restored input
    counts = {"restored": 0, "already there": 0}
    for src, dst in pairs:
        if dst.is_file():
            counts["already there"] += 1
            continue
        _copy(src, dst)
        os.utime(dst, (now, now))
        counts["restored"] += 1
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("save", "restore"),
                        help="save: results/ into the evidence folder; restore: the evidence folder into results/")
    parser.add_argument("evidence", type=Path, help="the evidence folder (e.g. evidence/minilm-long)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="the workflow's results/ folder")
    parser.add_argument("--log", type=Path, nargs="*", default=None,
                        help="save: the Snakemake logs to keep (default: .snakemake/log/*.snakemake.log beside results/)")


def run(args: argparse.Namespace) -> int:
    log_dir = args.results.resolve().parent / ".snakemake" / "log"
    if args.action == "save":
        logs = args.log if args.log is not None else sorted(log_dir.glob("*.snakemake.log"))
        counts = save(args.results, args.evidence, logs)
    else:
        counts = restore(args.evidence, args.results, log_dir)
        stateful = [p.parent for p in sorted(args.results.glob("runs/*/*/*/*/run.json"))
                    if not (p.parent / "state.safetensors").exists()
                    and json.loads(p.read_text())["options"].get("save_state", True) is not False]
        if stateful:
            print(f"note: {len(stateful)} run(s) were made with training.save_state true and the evidence keeps no "
                  f"weights (e.g. {stateful[0]}): `lnpeft export` cannot export them, and a Snakemake target "
                  "that asks for their state.safetensors trains them again")
    print(f"{args.evidence}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return 0
