"""`lnpeft finetune-pack`: train several parameter-efficient runs of one (task, seed) in one job.

The shared options (init, data, epochs, batch size, ...) are `lnpeft finetune`'s; each run is one
`--member key=value,...` with the keys method, lr, out, and for Fisher subsets mask and fraction
(optionally weight_decay and max_grad_norm, else the shared flags'). Every member writes the run
folder `lnpeft finetune --out` writes. A member whose loss turns non-finite writes failed.json
instead of epochs.parquet and the others finish; the exit status is then 1, or 0 with
--allow-failed-runs (the workflow's choice: its per-run jobs report each failure), and --status
FILE records every member's outcome as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from lnpeft.data.artifacts import write_json
from lnpeft.train import finetune as ft

MEMBER_KEYS = {"method": str, "lr": float, "out": Path, "mask": Path, "fraction": float,
               "weight_decay": float, "max_grad_norm": float}


def parse_member(text: str) -> dict:
    """`method=fisher,lr=1e-4,mask=m.parquet,fraction=0.1,out=DIR` -> FinetuneConfig keywords."""
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in MEMBER_KEYS:
            raise ValueError(f"--member {text!r}: {part!r} is not one of key=value with key in "
                             f"{', '.join(MEMBER_KEYS)}")
        if key in out:
            raise ValueError(f"--member {text!r}: {key} given twice")
        try:
            out[key] = MEMBER_KEYS[key](value.strip())
        except ValueError:
            raise ValueError(f"--member {text!r}: {key}={value!r} is not a number") from None
    missing = [k for k in ("method", "lr", "out") if k not in out]
    if missing:
        raise ValueError(f"--member {text!r}: needs {', '.join(missing)}")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ft.add_arguments(parser, member=True)
    parser.add_argument("--member", required=True, action="append",
                        help="one run: method=M,lr=LR,out=DIR[,mask=P,fraction=F] (repeat)")
    parser.add_argument("--pack-dropout", choices=("auto", "shared", "independent"), default="auto",
                        help="shared: each member gets its separate run's dropout masks (CPU default); "
                             "independent: one mask over the whole pack (CUDA default, keeps fused SDPA)")
    parser.add_argument("--status", type=Path, help="write every member's outcome here (JSON)")
    parser.add_argument("--allow-failed-runs", action="store_true",
                        help="exit 0 when some members failed (their folders hold failed.json)")


def run(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(ft.FinetuneConfig)}
    shared = {k: v for k, v in vars(args).items() if k in fields and k not in MEMBER_KEYS}
    shared["dev"], shared["test"] = tuple(args.dev), tuple(args.test)
    defaults = {"weight_decay": args.weight_decay, "max_grad_norm": args.max_grad_norm}
    cfgs = [ft.FinetuneConfig(**shared, **{**defaults, **parse_member(m)}) for m in args.member]
    runs = ft.finetune_pack(cfgs, dropout=args.pack_dropout)
    failed = [r for r in runs if r.error is not None]
    if args.status is not None:
        write_json({"runs": [{"run": r.name, "out": str(r.out),
                              "status": "failed" if r.error else "done",
                              **({"message": str(r.error)} if r.error else {})} for r in runs]}, args.status)
    print(f"{len(runs) - len(failed)} of {len(runs)} runs done"
          + "".join(f"\n  failed: {r.name}: {r.error}" for r in failed), flush=True)
    return 1 if failed and not args.allow_failed_runs else 0

