"""torch.compile's shared cache (`training.compile_cache`, lnpeft.train.compile_cache), measured:
the same `lnpeft finetune --compile true` run twice in one fresh cache folder, as two jobs of the
workflow would run it. The first compiles into the folder, the second reads the compiled graphs.
The JSON holds each process's wall and CPU seconds, its first epoch's seconds (compiling happens
there) and what the cache gave (run.json's compile_cache), and the second over the first.

    python bench/compile_cache.py --shape minilm --out bench/out/compile_cache.json
    python bench/compile_cache.py --quick ...        (tiny shape, seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

from lnpeft.data.artifacts import write_parquet  # noqa: E402


def write_sst2(path: Path, split: str, rows: int) -> Path:
    write_parquet(common.glue_frame("sst2", split).head(rows), path, "data")
    return path


def finetune(folder: Path, out: Path, device: str, threads: int | None) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(folder / "cache")}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, "-m", "lnpeft.cli", "finetune", "--init", str(folder / "init"),
           "--train", str(folder / "train.parquet"), "--dev", str(folder / "validation.parquet"),
           "--task", "sst2", "--method", "layernorm", "--lr", "1e-2", "--seed", "0", "--epochs", "1",
           "--batch-size", "32", "--max-length", "64", "--compile", "true", "--out", str(out),
           *(["--threads", str(threads)] if threads else [])]
    cpu0, t0 = common.children_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, common.children_cpu_s() - cpu0
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    epochs = pd.read_parquet(out / "epochs.parquet")
    return {"wall_s": wall, "cpu_s": cpu, "first_epoch_s": float(epochs["seconds"].iloc[0]),
            "compile_cache": json.loads((out / "run.json").read_text())["compile_cache"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="minilm", choices=sorted(common.SHAPES))
    ap.add_argument("--quick", action="store_true", help="tiny shape, 64 rows")
    ap.add_argument("--rows", type=int, default=256, help="SST-2 training rows (one epoch)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", type=Path, default=Path("bench/out/compile_cache.json"))
    args = ap.parse_args(argv)
    shape, rows = ("tiny", 64) if args.quick else (args.shape, args.rows)
    device = common.pick_device(args.device)
    with tempfile.TemporaryDirectory(prefix="compile_cache.") as tmp:
        folder = Path(tmp)
        common.build_model(shape).save_pretrained(folder / "init")
        common.tokenizer().save_pretrained(folder / "init")
        write_sst2(folder / "train.parquet", "train", rows)
        write_sst2(folder / "validation.parquet", "validation", 64)
        cold = finetune(folder, folder / "cold", device.type, args.threads)
        warm = finetune(folder, folder / "warm", device.type, args.threads)
    result = {"benchmark": "compile_cache", "machine": common.machine_info(device),
              "settings": {"shape": shape, "rows": rows, "device": device.type, "threads": args.threads},
              "cold": cold, "warm": warm,
              "ratios": {k: warm[k] / cold[k] for k in ("wall_s", "cpu_s", "first_epoch_s")}}
    common.write_json(result, args.out)
    r = result["ratios"]
    print(f"compile_cache {shape} [{device.type}]: warm over cold: first epoch x{r['first_epoch_s']:.2f}, "
          f"process wall x{r['wall_s']:.2f}, CPU x{r['cpu_s']:.2f}; cache hits "
          f"{warm['compile_cache']['graph_hits']} of {cold['compile_cache']['graph_misses']} graphs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
