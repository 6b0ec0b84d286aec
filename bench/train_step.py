"""Training-step throughput per method, real GLUE lengths, length-grouped vs padded to max length.

For each model shape and task (SST-2: short single sentences; RTE: long pairs) the same batches of
real training examples (MiniLM tokenizer, batch 32) are run through one training step of every
method, exactly as `lnpeft finetune` does it (trainable selection from lnpeft.model.methods,
requires_grad only on whole trained tensors, lnpeft.model.partial_tensors for partly trained ones,
AdamW over those, clipping). Two modes:
  grouped    ours: length-grouped dynamic padding (lnpeft.data.batching), torch.compile on CUDA
  padded128  the baseline: every batch padded to max_length, eager
Reported: step time (mean over the timed batches), examples/s, tokens/s (real tokens), padding
fraction, peak memory, and the ratios issue 7's targets name. Timing is paired: every method's
model stays alive and the methods step on the same batch back to back, round after round; a ratio
is the median of the per-batch ratios, so a drifting CPU clock or a busy neighbour hits all
methods alike.

  python bench/train_step.py                   # MiniLM shape (CPU default)
  python bench/train_step.py --large           # + BERT-large shape (slow on CPU)
  python bench/train_step.py --quick           # tiny shape, seconds (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lnpeft.data.batching import Encoded, bucket_width, collate, length_grouped_batches  # noqa: E402
from lnpeft.model.methods import MethodOptions, select  # noqa: E402
from lnpeft.train.packing import in_place, pack, replicate, shared_dropout  # noqa: E402
from lnpeft.train.run_state import make_optimizer  # noqa: E402

METHODS = ("full", "bitfit", "layernorm", "random", "fisher")
TASKS = ("sst2", "rte")
PACK = (("layernorm", None), ("bitfit", None), ("random", None), ("fisher", 0.1), ("fisher", 0.3), ("fisher", 0.5))
"""The members of the packed step (`--pack G` takes the first G, cycling): the issue's mixed pack."""


def write_fisher_mask(model, path: Path, seed: int = 0) -> Path:
    """A masks parquet ranking the output LayerNorm entries randomly (the speed does not depend
    on which entries are chosen, only on how many and where)."""
    import pandas as pd

    from lnpeft.data.artifacts import write_parquet
    from lnpeft.model.architectures import for_config

    arch = for_config(model.config)
    frames = []
    for name, p in model.named_parameters():
        if arch.is_layernorm(name):
            layer, _, kind = arch.parse(name)
            frames.append(pd.DataFrame({"param": name, "layer": layer, "kind": kind,
                                        "index": np.arange(p.numel(), dtype=np.int64)}))
    df = pd.concat(frames, ignore_index=True)
    rng = np.random.default_rng(seed)
    df["score"] = rng.random(len(df))
    df["rank"] = np.argsort(np.argsort(-df["score"].to_numpy(), kind="stable"), kind="stable").astype(np.int64)
    write_parquet(df, path, "masks")
    return path


class Stepper:
    """One training step of a method, or of a pack of runs (method "pack", `pack` members of PACK),
    on a model copy, as lnpeft.train.finetune runs it (same trainable selection, partly trained tensors'
    entries, packed tensors, one optimizer and clipping norm per run; minus the lr schedule, which
    costs nothing)."""

    def __init__(self, base_model, method: str, device: torch.device, compile_: bool,
                 mask_path: Path | None, fraction: float = 0.1, lr: float = 1e-4,
                 weight_decay: float = 0.0, pack_size: int = 1) -> None:
        model = copy.deepcopy(base_model).to(device).train()
        members = (pack_members(pack_size) if method.startswith("pack")
                   else [(method, fraction if method == "fisher" else None)])
        sets = [select(model, m, MethodOptions(seed=0, fraction=f, mask=mask_path if m == "fisher" else None))
                for m, f in members]
        self.params = [in_place(model, sets[0])] if len(sets) == 1 else pack(model, sets)
        self.optimizers = [make_optimizer(p.parameters(), lr, weight_decay, device) for p in self.params]
        self.model = model
        self.fwd = torch.compile(model, dynamic=True) if compile_ else model
        self.compiled = compile_
        self.device = device
        self.amp = device.type == "cuda"
        # as lnpeft.train.finetune's default: each member its separate run's dropout masks on CPU
        self.dropout = (lambda: shared_dropout(len(sets))) if device.type == "cpu" else contextlib.nullcontext

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        copies = len(self.params)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in replicate(batch, copies).items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp), self.dropout():
            logits = self.fwd(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              token_type_ids=batch["token_type_ids"]).logits
        logits = logits.reshape(copies, len(batch["labels"]), -1)
        losses = torch.stack([F.cross_entropy(logits[g].float(), batch["labels"].long()) for g in range(copies)])
        losses.sum().backward()
        for params, optimizer in zip(self.params, self.optimizers):
            torch.nn.utils.clip_grad_norm_(params.parameters(), 1.0)
            optimizer.step()
            params.sync()
            optimizer.zero_grad(set_to_none=True)
        return losses.detach()


def padding_stats(data: Encoded, batch_size: int, max_length: int) -> dict:
    """Padding over a whole (sampled) split: length-grouped + length buckets vs padded to max."""
    lengths = data.lengths
    batches = length_grouped_batches(lengths, batch_size, seed=0)
    widths = np.array([bucket_width(int(lengths[b].max())) for b in batches])
    sizes = np.array([len(b) for b in batches])
    real = int(lengths.sum())
    grouped = int((widths * sizes).sum())
    return {"examples": len(data), "mean_tokens": float(lengths.mean()),
            "mean_width_grouped": float((widths * sizes).sum() / sizes.sum()),
            "distinct_widths": int(len(np.unique(widths))),
            "padding_fraction_grouped": 1 - real / grouped,
            "padding_fraction_padded": 1 - real / (len(data) * max_length)}


def make_batches(data: Encoded, batch_size: int, count: int, max_length: int) -> dict[str, list]:
    """`count` length-grouped training batches at evenly spaced quantiles of their width (so a
    few timed batches have the split's mean width), and the same batches padded to max."""
    order = [b for b in length_grouped_batches(data.lengths, batch_size, seed=0) if len(b) == batch_size]
    if len(order) < count:
        raise ValueError(f"only {len(order)} full batches of {batch_size}; sample more rows (--rows)")
    order.sort(key=lambda b: int(data.lengths[b].max()))
    order = [order[int((i + 0.5) * len(order) / count)] for i in range(count)]
    grouped = [collate(data, b) for b in order]
    return {"grouped": grouped, "padded128": [pad_to(b, max_length, data.pad_id) for b in grouped]}


def pad_to(batch: dict[str, torch.Tensor], width: int, pad_id: int) -> dict[str, torch.Tensor]:
    """The baseline's batch: every sequence padded to `width` (max_length) tokens."""
    extra = width - batch["input_ids"].shape[1]
    return {"input_ids": F.pad(batch["input_ids"], (0, extra), value=pad_id),
            "token_type_ids": F.pad(batch["token_type_ids"], (0, extra)),
            "attention_mask": F.pad(batch["attention_mask"], (0, extra)), "labels": batch["labels"]}


def bench_shape(shape: str, tasks: dict[str, Encoded], args, device: torch.device) -> tuple[list, dict]:
    base = common.build_model(shape, num_labels=2)
    compile_ = args.compile == "true" or (args.compile == "auto" and device.type == "cuda")
    records, ratios = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        mask_path = write_fisher_mask(base, Path(tmp) / "mask.parquet")
        trainable = {m: base_trainable(base, m, mask_path) for m in {*args.methods, *args.baseline_methods}}
        for size in args.packs:
            trainable[f"pack{size}"] = sum(base_trainable(base, m, mask_path, f or 0.1) for m, f in pack_members(size))
        for task, data in tasks.items():
            batches = make_batches(data, args.batch_size, args.steps, args.max_length)
            runs = [(m, mode) for mode in batches
                    for m in (args.methods if mode == "grouped" else args.baseline_methods)]
            for size in args.packs:  # the same grouped batches, each repeated for every member
                batches[f"packed{size}"] = batches["grouped"]
                runs.append((f"pack{size}", f"packed{size}"))
            peaks = {run: peak_memory(base, run, batches, device, compile_, mask_path, pack_of(run[0]))
                     for run in runs}
            steppers = {(m, mode): Stepper(base, m, device, compile_ and mode != "padded128", mask_path,
                                           pack_size=pack_of(m))
                        for m, mode in runs}
            for (m, mode), stepper in steppers.items():
                # CUDA: the warm-up visits every timed batch once, so each shape's compilation
                # happens before timing; CPU: a step or two suffices
                warm = len(batches[mode]) if stepper.compiled else args.warmup
                for i in range(warm):
                    stepper.step(batches[mode][i % len(batches[mode])])
            # paired timing: every method steps on batch i back to back, round after round, so a
            # drifting clock or a busy neighbour hits all methods alike; ratios are medians of
            # per-batch ratios
            times = {run: np.zeros((args.repeats, args.steps)) for run in runs}
            for r in range(args.repeats):
                for i in range(args.steps):
                    for run, stepper in steppers.items():
                        batch = batches[run[1]][i]
                        times[run][r, i] = common.time_calls(lambda _: stepper.step(batch), 1, 0, device)[0]
            del steppers
            for (method, mode), t in times.items():
                bl = batches[mode]
                real = sum(int(b["attention_mask"].sum()) for b in bl)
                padded = sum(b["input_ids"].numel() for b in bl)
                copies = pack_of(method)
                real, padded = real * copies, padded * copies
                n_ex = sum(len(b["labels"]) for b in bl) * copies
                step = float(t.mean())  # the mean over the same batches: the time per step of an epoch
                records.append({
                    "shape": shape, "task": task, "method": "pack" if copies > 1 else method,
                    "mode": "packed" if copies > 1 else mode,
                    "batch_size": args.batch_size, "steps_timed": int(t.size), "step_s": step,
                    "step_s_median": float(np.median(t)),
                    "examples_per_s": n_ex / len(bl) / step,
                    "tokens_per_s": real / len(bl) / step,
                    "padded_tokens_per_s": padded / len(bl) / step,
                    "padding_fraction": 1 - real / padded, "mean_width": padded / n_ex,
                    "peak_mem_mb": peaks[(method, mode)], "trainable": trainable[method],
                    "compiled": bool(compile_ and mode != "padded128"),
                    **(pack_record(times, copies) if copies > 1 else {}),
                })
            ratio = lambda a, b: float(np.median(times[a] / times[b]))  # noqa: E731
            r = {}
            for mode in batches:
                if ("layernorm", mode) in times and ("full", mode) in times:
                    r[f"layernorm_over_full_{mode}"] = ratio(("layernorm", mode), ("full", mode))
                for m in ("random", "fisher", "bitfit"):
                    if (m, mode) in times and ("layernorm", mode) in times:
                        r[f"{m}_over_layernorm_{mode}"] = ratio((m, mode), ("layernorm", mode))
            for m in args.methods:
                if (m, "grouped") in times and (m, "padded128") in times:
                    # same examples, so examples/s speed-up = step-time ratio
                    r[f"{m}_grouped_speedup"] = ratio((m, "padded128"), (m, "grouped"))
            for x in records:
                if x["mode"] == "packed" and (x["shape"], x["task"]) == (shape, task) and "speedup" in x:
                    r[f"pack{x['pack_size']}_speedup"] = x["speedup"]
            ratios[f"{shape}/{task}"] = r
    return records, ratios


def pack_members(size: int) -> list[tuple[str, float | None]]:
    return [PACK[i % len(PACK)] for i in range(size)]


def pack_of(method: str) -> int:
    """The runs of a step: `pack16` -> 16; a method alone -> 1."""
    return int(method.removeprefix("pack")) if method.startswith("pack") else 1


def pack_record(times: dict, size: int) -> dict:
    """The packed step against its members stepped one by one: per batch, the sum of the members'
    separate step times (a Fisher subset timed at f = 0.1: a step's time does not depend on f) over
    the pack's step time; the median over batches."""
    members = [m for m, _ in pack_members(size)]
    out = {"pack_size": size, "members": [f"{m}" + (f"-f{f:g}" if f else "") for m, f in pack_members(size)]}
    if all((m, "grouped") in times for m in members):
        separate = sum(times[(m, "grouped")] for m in members)
        out |= {"separate_step_s": float(separate.mean()),
                "speedup": float(np.median(separate / times[(f"pack{size}", f"packed{size}")]))}
    return out


def base_trainable(base, method: str, mask_path: Path, fraction: float = 0.1) -> int:
    options = MethodOptions(seed=0, fraction=fraction if method == "fisher" else None,
                            mask=mask_path if method == "fisher" else None)
    return select(base, method, options).count(base)


def peak_memory(base, run: tuple[str, str], batches: dict, device: torch.device, compile_: bool,
                mask_path: Path, pack_size: int = 1) -> float:
    """Peak memory (MiB) of one step on the widest batch with this method's model alone (CUDA);
    on CPU the process's peak RSS so far (it cannot be reset)."""
    method, mode = run
    common.reset_peak(device)
    stepper = Stepper(base, method, device, compile_ and mode != "padded128", mask_path, pack_size=pack_size)
    widest = max(batches[mode], key=lambda b: b["input_ids"].numel())
    stepper.step(widest)
    stepper.step(widest)  # AdamW's state exists from the first step on
    peak = common.peak_mem_mb(device)
    del stepper
    return peak


def targets(ratios: dict, padding: dict, on_gpu: bool) -> list[dict]:
    """Issue 7's training targets, checked on what this run measured."""
    out = []
    for key, r in ratios.items():
        shape = key.split("/")[0]
        if "layernorm_over_full_grouped" in r:
            limit = 0.5 if on_gpu else 0.85
            v = r["layernorm_over_full_grouped"]
            out.append({"target": f"layernorm step <= {limit}x full ({key})", "value": v, "met": v <= limit})
        for m in ("random", "fisher"):
            k = f"{m}_over_layernorm_grouped"
            if k in r:
                out.append({"target": f"{m} step <= 1.1x layernorm ({key})", "value": r[k], "met": r[k] <= 1.1})
        if on_gpu and shape == "bert-large" and "layernorm_grouped_speedup" in r:
            v = r["layernorm_grouped_speedup"]
            out.append({"target": f"layernorm throughput >= 3x eager padded baseline ({key})",
                        "value": v, "met": v >= 3})
    for task, p in padding.items():
        v = p["padding_fraction_grouped"]
        out.append({"target": f"padding <= 10% of tokens ({task}, whole sample)", "value": v, "met": v <= 0.10})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shape, few steps (seconds)")
    ap.add_argument("--large", action="store_true", help="also the BERT-large shape")
    ap.add_argument("--shapes", help="comma-separated shapes (overrides --quick/--large)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--baseline-methods", help="methods also run padded to max_length (default: all; none: no baseline)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--steps", type=int, help="timed steps per round (default 4 CPU, 20 GPU, 2 quick)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, help="interleaved rounds (default 2; 1 quick)")
    ap.add_argument("--rows", type=int, default=20000, help="rows sampled per task (padding stats, batches)")
    ap.add_argument("--compile", choices=("auto", "true", "false"), default="auto")
    ap.add_argument("--pack", default="6",
                    help="also a packed step of this many mixed runs (PACK), against its members one by one; "
                         "several sizes comma-separated (4,16), each measured in this run; 1: none")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time (a busy shared CPU machine; with --threads 1)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/train_step.json"))
    args = ap.parse_args(argv)
    device = common.pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    common.set_clock(args.clock)
    args.methods = args.methods.split(",")
    args.packs = [size for size in (int(s) for s in str(args.pack).split(",")) if size > 1]
    args.baseline_methods = (args.methods if args.baseline_methods is None else []
                             if args.baseline_methods == "none" else args.baseline_methods.split(","))
    shapes = (args.shapes.split(",") if args.shapes else ["tiny"] if args.quick
              else (["minilm", "bert-large"] if args.large or device.type == "cuda" else ["minilm"]))
    if args.quick:
        args.rows = min(args.rows, 2000)
    args.steps = args.steps or (2 if args.quick else 20 if device.type == "cuda" else 4)
    args.repeats = args.repeats or (1 if args.quick else 2)

    # quick: the small dev files (same length distribution; reading SST-2's 67k-row train file
    # alone takes seconds)
    split = "validation" if args.quick else "train"
    tasks = {t: common.load_task(t, args.rows, args.max_length, split=split) for t in args.tasks.split(",")}
    padding = {t: padding_stats(d, args.batch_size, args.max_length) for t, d in tasks.items()}
    records, ratios = [], {}
    for shape in shapes:
        rec, rat = bench_shape(shape, tasks, args, device)
        records += rec
        ratios |= rat
    result = {
        "benchmark": "train_step", "machine": common.machine_info(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "shapes": shapes, "padding": padding, "results": records, "ratios": ratios,
        "targets": targets(ratios, padding, device.type == "cuda"),
    }
    common.write_json(result, args.out)
    for key, r in ratios.items():
        ln = next(x for x in records if f"{x['shape']}/{x['task']}" == key
                  and x["method"] == "layernorm" and x["mode"] == "grouped") if "layernorm" in args.methods else None
        print(f"train_step {key}: " + " ".join(f"{k}={v:.2f}" for k, v in r.items())
              + (f" layernorm={ln['examples_per_s']:.1f}ex/s" if ln else "")
              + f" padding={padding[key.split('/')[1]]['padding_fraction_grouped']:.3f} [{device}]")
    return result


if __name__ == "__main__":
    main()
