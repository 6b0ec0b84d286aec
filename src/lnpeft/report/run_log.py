"""What a workflow run cost: wall time from its Snakemake logs, job seconds from its benchmarks,
and the machines its runs ran on (their run.json)."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from pathlib import Path

import pandas as pd

from lnpeft.errors import LnpeftError
from lnpeft.report.summary import duration

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$", re.M)  # a job's start or end line


def stamp_time(stamp: str) -> datetime:
    """A Snakemake log's `[Sat Dec  5 13:36:15 2026]` stamp (without its brackets) as a datetime."""
    return datetime.strptime(" ".join(stamp.split()), "%a %b %d %H:%M:%S %Y")


def job_span(log_text: str) -> tuple[datetime, datetime] | None:
    """A Snakemake log's first and last job stamp: the wall time the write-up counts for a run that
    started jobs (finished, failed or cut off); None for a dry run or a run with nothing to do."""
    stamps = [stamp_time(s) for s in STAMP.findall(log_text)]
    return (min(stamps), max(stamps)) if len(stamps) >= 2 else None


def last_benchmark_row(path: Path) -> pd.Series:
    """A Snakemake benchmark's last row (a job's rerun appends one): s, cpu_time, ..."""
    return pd.read_csv(path, sep="\t").iloc[-1]


def run_time(logs: list[Path], benchmarks: Path) -> tuple[str, pd.DataFrame]:
    """Wall time of each Snakemake log (first to last timestamp; logs of runs with nothing to do
    have none), summed over the logs that built the results; job seconds per rule (benchmarks).
    Jobs a log starts and neither finishes nor fails were cut off when that run stopped (a killed
    sitting): their time is in no benchmark, so the text counts them and their wall time."""
    spans, finished, cores = [], 0, set()
    cut = Counter()  # jobs cut off: count, and seconds from their start to their log's last stamp
    for log in logs:
        text = log.read_text()
        span = job_span(text)
        if span:
            spans.append(span)
            finished += text.count("Finished job")
            cores.update(re.findall(r"^Provided cores: (\d+)$", text, re.M))
            for started in cut_off_jobs(text):
                cut["jobs"] += 1
                cut["s"] += (span[1] - started).total_seconds()
    if not spans:
        raise LnpeftError(f"{', '.join(map(str, logs))}: no job timestamps; pass the Snakemake log(s) of the "
                          "run (.snakemake/log/*.snakemake.log)")
    wall = sum((b - a).total_seconds() for a, b in spans)
    rows = []
    for path in sorted(benchmarks.glob("**/*.tsv")):
        bench = last_benchmark_row(path)
        rows.append({"rule": path.relative_to(benchmarks).parts[0], "s": float(bench["s"]),
                     "cpu": float(bench.get("cpu_time", float("nan")))})
    frame = pd.DataFrame(rows, columns=["rule", "s", "cpu"])
    per_rule = (frame.groupby("rule").agg(count=("s", "size"), sum=("s", "sum"), cpu=("cpu", "sum"))
                .sort_values("sum", ascending=False))
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    runs = f" in {len(spans)} Snakemake runs" if len(spans) > 1 else ""
    on = f" on {'/'.join(sorted(cores))} Snakemake cores" if cores else ""
    # the jobs' CPU time is what the run costs; wall time also holds pauses and other load
    cpu = f"; the jobs' CPU time sums to {duration(frame['cpu'].sum())}" if frame["cpu"].notna().any() else ""
    until = f"{last:%H:%M}" if last.date() == first.date() else f"{last:%Y-%m-%d %H:%M}"
    text = (f"{duration(wall)} wall time from the first to the last job{runs} ({first:%Y-%m-%d %H:%M} to "
            f"{until}), {n_jobs(finished)}{on}{cpu}")
    if cut["jobs"]:
        text += (f"; {n_jobs(cut['jobs'], 'more job')} cut off when a Snakemake run stopped ran at least "
                 f"{duration(cut['s'])} of wall time that no benchmark holds")
    return text, per_rule


def cut_off_jobs(log_text: str) -> list[datetime]:
    """Start times of the jobs a Snakemake log starts (`jobid: N` under a timestamp) and neither
    finishes (`Finished jobid: N`, `Finished job N.`) nor reports failed (`jobid: N` in an `Error in`
    block)."""
    started, ended, stamp, in_error = {}, set(), None, False
    for line in log_text.splitlines():
        if found := STAMP.match(line):
            stamp = stamp_time(found.group(1))
        elif found := re.match(r"^Finished job(?:id:)? (\d+)", line):
            ended.add(found.group(1))
        elif found := re.match(r"^\s+jobid: (\d+)$", line):
            if in_error:
                ended.add(found.group(1))
            elif stamp is not None:
                started.setdefault(found.group(1), stamp)
        if not line.startswith((" ", "\t")):  # a block's header line: an error block or another
            in_error = line.startswith("Error in ")
    return [when for job, when in started.items() if job not in ended]


def n_runs(n: int) -> str:
    return f"{n} run{'s' * (n != 1)}"


def n_jobs(n: int, noun: str = "job") -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def machines(run_infos: list[dict], unrecorded: str | None = None) -> str:
    """The machines the runs ran on, as their run.json files record them (`lnpeft.train.machine`), with
    each one's count where there are several; `unrecorded`: what runs without a record ran on."""
    if not run_infos:
        return "no machine (no runs)"
    counts = Counter(info.get("machine") for info in run_infos)
    missing = counts.pop(None, 0)
    if missing and unrecorded:
        counts[f"{unrecorded} (given for runs without a record)"] += missing
        missing = 0
    if len(counts) == 1 and not missing:
        return next(iter(counts))
    parts = [f"{name} ({n_runs(n)})" for name, n in counts.most_common()]
    if missing:
        parts.append(f"a machine not recorded for {n_runs(missing)} (their run.json predates lnpeft recording it)"
                     if counts else "machines their run.json does not record (runs from before lnpeft recorded it)")
    return " and ".join(parts)
