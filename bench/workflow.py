"""The workflow end to end in a temporary folder: total wall time and time per rule (stage).

  python bench/workflow.py           # the tiny scenario (tests/workflow/tiny/config.yaml)
  python bench/workflow.py --full    # the demo (config.yaml + configs/demo.yaml): minutes

Per-rule times come from Snakemake's own log (start and finish stamp of every job, 1 s
resolution) and, where a rule declares `benchmark:`, from results/benchmarks/<rule>/**.tsv (its
`s` column, the job's own wall time). Issue 7's target: the demo within 15 minutes on this 2-core
machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TINY = common.REPO / "tests" / "workflow" / "tiny" / "config.yaml"
DEMO = [common.REPO / "config.yaml", common.REPO / "configs" / "demo.yaml"]
TARGET_S = 15 * 60

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]")
_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):")
_JOBID = re.compile(r"^\s+jobid: (\d+)")
_DONE = re.compile(r"Finished job(?:id)?:? (\d+)")


def parse_log(text: str) -> dict[str, dict]:
    """rule -> {jobs, seconds (sum of job spans), max_s} from a Snakemake log."""
    now, rule = None, None
    started: dict[str, tuple[str, dt.datetime]] = {}
    out: dict[str, dict] = {}
    for line in text.splitlines():
        if m := _STAMP.match(line):
            now = dt.datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif m := _RULE.match(line):
            rule = m.group(1)
        elif (m := _JOBID.match(line)) and rule is not None and now is not None:
            started[m.group(1)] = (rule, now)
            rule = None
        elif (m := _DONE.search(line)) and m.group(1) in started and now is not None:
            name, t0 = started.pop(m.group(1))
            span = (now - t0).total_seconds()
            row = out.setdefault(name, {"jobs": 0, "seconds": 0.0, "max_s": 0.0})
            row["jobs"] += 1
            row["seconds"] += span
            row["max_s"] = max(row["max_s"], span)
    return out


def parse_benchmarks(folder: Path) -> dict[str, dict]:
    """rule -> {jobs, seconds, max_s, max_rss_mb, cpu_s} from results/benchmarks/<rule>/**/*.tsv."""
    out: dict[str, dict] = {}
    root = folder / "results" / "benchmarks"
    for tsv in sorted(root.glob("**/*.tsv")) if root.is_dir() else []:
        rule = tsv.relative_to(root).parts[0]
        lines = tsv.read_text().splitlines()
        if len(lines) < 2:
            raise ValueError(f"{tsv}: benchmark file without a data row")
        head, values = lines[0].split("\t"), lines[1].split("\t")
        rec = dict(zip(head, values))
        seconds = float(rec["s"])
        rss = float(rec["max_rss"]) if rec.get("max_rss", "NA") not in ("NA", "-", "") else 0.0
        cpu = float(rec["cpu_time"]) if rec.get("cpu_time", "NA") not in ("NA", "-", "") else 0.0
        row = out.setdefault(rule, {"jobs": 0, "seconds": 0.0, "max_s": 0.0, "max_rss_mb": 0.0, "cpu_s": 0.0})
        row["jobs"] += 1
        row["seconds"] += seconds
        # CPU seconds do not grow when other processes share the cores (wall seconds do)
        row["cpu_s"] += cpu
        row["max_s"] = max(row["max_s"], seconds)
        row["max_rss_mb"] = max(row["max_rss_mb"], rss)
    return out


def write_config(folder: Path, full: bool) -> Path:
    config: dict = {}
    for path in DEMO if full else [TINY]:
        from lnpeft.plan.config_file import deep_update

        config = deep_update(config, yaml.safe_load(path.read_text()))
    config.setdefault("data", {})["glue_dir"] = str(common.glue_dir())
    out = folder / "config.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def run_workflow(folder: Path, full: bool, targets: list[str], cores: int, timeout: int) -> dict:
    config = write_config(folder, full)
    exe = Path(sys.executable).parent / "snakemake"
    cmd = [str(exe), "-s", str(common.REPO / "Snakefile"), "--configfile", str(config),
           "--cores", str(cores), *targets]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    (folder / "snakemake.log").write_text(log)
    return {"scenario": "demo" if full else "tiny", "targets": targets, "cores": cores,
            "returncode": proc.returncode, "wall_s": wall, "rules_from_log": parse_log(log),
            "rules_from_benchmarks": parse_benchmarks(folder),
            "log_tail": log.splitlines()[-15:] if proc.returncode else []}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="the demo configuration (minutes)")
    ap.add_argument("--targets", default="all", help="comma-separated Snakemake targets")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--keep", type=Path, help="run in this folder (kept) instead of a temporary one")
    ap.add_argument("--out", type=Path, default=Path("bench/out/workflow.json"))
    args = ap.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run_workflow(args.keep.resolve(), args.full, targets, args.cores, args.timeout)
    else:
        with tempfile.TemporaryDirectory(prefix="lnpeft-bench-") as tmp:
            result = run_workflow(Path(tmp), args.full, targets, args.cores, args.timeout)
    result["machine"] = common.machine_info(common.pick_device("cpu"))
    result["load_average"] = os.getloadavg()
    if args.full:
        result["targets_check"] = [{"target": "demo workflow within 15 minutes on 2 cores",
                                    "value": result["wall_s"], "met": result["returncode"] == 0
                                    and result["wall_s"] <= TARGET_S}]
    common.write_json(result, args.out)
    rules = result["rules_from_log"]
    top = sorted(rules.items(), key=lambda kv: -kv[1]["seconds"])[:4]
    print(f"workflow {result['scenario']}: rc={result['returncode']} wall {result['wall_s']:.0f}s, "
          f"{sum(r['jobs'] for r in rules.values())} jobs; "
          + ", ".join(f"{k} {v['seconds']:.0f}s/{v['jobs']}" for k, v in top))
    if result["returncode"]:
        print("\n".join(result["log_tail"]), file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
