"""Run every benchmark, write bench/out/*.json, print one summary line per benchmark.

  python bench/run_all.py --quick --out bench/out     # CI / `make bench`: tiny sizes, ~a minute
  python bench/run_all.py --out bench/out             # MiniLM shape on CPU; BERT-large too on GPU
  python bench/run_all.py --large --full              # + BERT-large on CPU, + the demo workflow

--quick runs the training-step and Fisher benchmarks at the tiny shape, then `lnpeft estimate`
from the measured throughput; the workflow and packing benchmarks run only with --workflow (the
tiny scenario, 3 packed runs) or --full (the demo, 6 packed runs), since they take minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--large", action="store_true", help="BERT-large shape on CPU as well")
    ap.add_argument("--workflow", action="store_true", help="also the tiny workflow scenario")
    ap.add_argument("--full", action="store_true", help="also the demo workflow end to end")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import fisher
    import packing
    import train_step

    import workflow

    common_flags = ((["--quick"] if args.quick else []) + ["--device", args.device]
                    + (["--threads", str(args.threads)] if args.threads else []))
    t0 = time.perf_counter()
    train_step.main(common_flags + (["--large"] if args.large else [])
                    + ["--out", str(args.out / "train_step.json")])
    fisher.main(common_flags + (["--large"] if args.large else []) + ["--out", str(args.out / "fisher.json")])
    if args.workflow or args.full:
        workflow.main((["--full"] if args.full else []) + ["--out", str(args.out / "workflow.json")])
        packing.main(([] if args.full else ["--quick"]) + ["--out", str(args.out / "packing.json")])

    # the grid projection from what was just measured (lnpeft estimate, as a user would run it)
    shapes = json.loads((args.out / "train_step.json").read_text())["shapes"]
    cmd = [sys.executable, "-m", "lnpeft.cli", "estimate", "--json",
           "--configfile", str(HERE.parent / "config.yaml"),
           "--throughput", str(args.out / "train_step.json"), "--shape", shapes[-1],
           "--fisher-throughput", str(args.out / "fisher.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    estimate = json.loads(proc.stdout)
    (args.out / "estimate.json").write_text(json.dumps(estimate, indent=2, sort_keys=True) + "\n")
    total = estimate["stages"]["total"]
    print(f"estimate paper grid at shape {shapes[-1]} on {estimate['throughput']['device']}: "
          f"ours {total['ours_hours']:.1f} h, eager padded baseline {total['baseline_hours']:.1f} h "
          f"({total['baseline_hours'] / total['ours_hours']:.2f}x)")
    print(f"bench: done in {time.perf_counter() - t0:.0f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
