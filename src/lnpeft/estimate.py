"""`lnpeft estimate`: the GPU-hours of a config's whole grid, before anyone submits it.

Stages counted (what `snakemake all` runs that costs accelerator time):
  table2     every (task, method, lr, seed) of Table 2: `training.epochs` epochs
  fractions  every Fisher-subset run of Figures 2 and 5: (task, scheme, fraction, lr, seed)
  drift      one full fine-tune per task for Figure 1 (`drift.epochs` epochs, first dev split only)
  fisher     one per-sample-gradient pass per task (`fisher.max_samples` rows)
Each run trains on the task's training rows every epoch, evaluates every dev split every epoch and
predicts the test splits once (at least once: again whenever the dev score improves). Row counts
are the official GLUE sizes (lnpeft.tasks.OFFICIAL_ROWS; a custom task's files counted) after
`data.subsample`.

Two projections side by side:
  ours      torch.compile, length-grouped dynamic padding with length buckets: time is tokens
            over tokens/s, tokens = the task's mean padded width (TOKENS) per example
  baseline  eager, every batch padded to max_length: time is examples over examples/s (eager is
            launch-bound, issue 7: a 32 x 48 step costs what a 32 x 128 step does)
Throughput comes from `bench/out/train_step.json` (bench/train_step.py on the target card) or,
without one, from the H200 numbers of issue 7 (DEFAULT_THROUGHPUT). Assumptions: examples/s do not
depend on the batch size; evaluation (forward only) runs at 3x the full method's training
throughput; bitfit/random/fisher fall back to layernorm/full where a number is missing (below).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from lnpeft import user_tasks
from lnpeft.tasks import get_task, task_rows
from lnpeft.textfile import read_utf8
from lnpeft.workflow_config import fmt_lr, fraction_seeds, method_learning_rates

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
EVAL_SPEEDUP = 3.0
"""Forward-only examples/s relative to a full training step (backward ~2x the forward)."""

# Mean tokens per example after bucketed length-grouped padding (batch 32, max_length 128):
# measured with bench/train_step.py's padding statistics on the local GLUE train files with the
# MiniLM (uncased WordPiece) tokenizer on 2026-11-26; MNLI and QNLI from 480/320-row samples
# (their real mean x 1.07 padding), AX as MNLI, WNLI from its train file. A cased vocabulary
# (bert-large-cased) splits a few % more tokens; widths are capped at max_length.
TOKENS: dict[str, float] = {
    "cola": 11.8, "sst2": 14.2, "mrpc": 56.4, "stsb": 29.9, "qqp": 33.0, "mnli": 42.0,
    "qnli": 52.2, "rte": 69.6, "wnli": 41.0, "ax": 42.0,
}

# Issue 7's H200 measurements (bf16 autocast, SDPA, random-init BERT-large shape, batch 32):
# eager (baseline, padded to 128): full 55-68 ms/step (midpoint 61.5), layernorm 47-48 (47.5);
# compiled (ours): layernorm 18.2 ms at 32 x 128, full 50.2 ms at 32 x 128 (tokens/s = 4096 / step).
# Fisher over the output LayerNorms: batched hooks 533 samples/s, naive batch-size-1 loop 22.6.
# bitfit, random and the fisher-mask method were not measured there. Ours: none forms a dense
# weight gradient (random's scattered matrix entries train through lnpeft.partial_tensors at
# 1.04x a layernorm step, BERT-large shape on CPU), so they take layernorm's numbers. Baseline:
# the naive random control masks whole matrices' gradients, which costs a full step.
DEFAULT_THROUGHPUT: dict = {
    "source": "issue 7 (H200, bf16, BERT-large shape, batch 32)",
    "device": "NVIDIA H200",
    "ours_tokens_per_s": {"full": 32 * 128 / 0.0502, "layernorm": 32 * 128 / 0.0182},
    "baseline_examples_per_s": {"full": 32 / 0.0615, "layernorm": 32 / 0.0475},
    "fisher": {"ours_samples_per_s": 533.0, "baseline_samples_per_s": 22.6},
}
FALLBACK = {"bitfit": "layernorm", "fisher": "layernorm", "random": "layernorm", "layernorm": "full"}
BASELINE_FALLBACK = FALLBACK | {"random": "full"}


# ---------------------------------------------------------------- config


def schema_defaults(schema: dict) -> dict:
    """The defaults a JSON schema declares, nested like the config."""
    out = {}
    for key, prop in schema.get("properties", {}).items():
        if prop.get("type") == "object" and "properties" in prop:
            out[key] = deep_update(schema_defaults(prop), prop.get("default") or {})
        elif "default" in prop:
            out[key] = prop["default"]
    return out


def deep_update(base: dict, overlay: dict) -> dict:
    """Recursive dict update, as Snakemake merges several --configfile files."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> object:
    """A YAML file (UTF-8, a BOM allowed); a bad byte or bad YAML is one ValueError naming file and line."""
    text = read_utf8(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        position = getattr(err, "position", None)  # a ReaderError (a NUL byte ...) has no mark
        line = mark.line + 1 if mark else text[:position].count("\n") + 1 if position is not None else "?"
        if isinstance(err, yaml.reader.ReaderError):
            char = chr(err.character) if isinstance(err.character, int) else err.character
            problem = f"character {char!r}: {err.reason}"
        else:
            problem = " ".join(str(p) for p in (getattr(err, "context", None), getattr(err, "problem", None)) if p)
        raise ValueError(f"{path}:{line}: not a YAML config ({problem or type(err).__name__})") from None


def load_config(paths: list[Path]) -> dict:
    """Schema defaults, then each config file in order (later files win)."""
    config = schema_defaults(yaml.safe_load(SCHEMA.read_text()))
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config file must be a YAML mapping, got {type(data).__name__}")
        config = deep_update(config, data)
    user_tasks.define(config.get("custom_tasks") or {})  # their names resolve like GLUE's from here on
    return config


# ---------------------------------------------------------------- throughput


@dataclass(frozen=True)
class Throughput:
    source: str
    device: str
    ours_tokens_per_s: dict[str, float]
    baseline_examples_per_s: dict[str, float]
    fisher_ours: float
    fisher_baseline: float
    pack_speedup: float = 1.0
    """Training time of G runs one by one over that of their pack (bench/train_step.py, mode packed)."""
    pack_measured: bool = False
    """False: no packed measurement, so no gain is assumed (the projection is an upper bound)."""

    def _get(self, table: dict[str, float], method: str, fallback: dict[str, str]) -> float:
        while method not in table:
            if method not in fallback:
                raise ValueError(f"throughput ({self.source}) has no number for method {method!r} "
                                 f"or its fallbacks; measured: {sorted(table)}")
            method = fallback[method]
        return table[method]

    def ours(self, method: str) -> float:
        return self._get(self.ours_tokens_per_s, method, FALLBACK)

    def baseline(self, method: str) -> float:
        return self._get(self.baseline_examples_per_s, method, BASELINE_FALLBACK)


def default_throughput() -> Throughput:
    d = DEFAULT_THROUGHPUT
    return Throughput(d["source"], d["device"], dict(d["ours_tokens_per_s"]), dict(d["baseline_examples_per_s"]),
                      d["fisher"]["ours_samples_per_s"], d["fisher"]["baseline_samples_per_s"])


def read_throughput(path: Path, shape: str | None = None, fisher_path: Path | None = None) -> Throughput:
    """Per-method throughput at one model shape from bench/train_step.py's JSON (mean over tasks
    of padded tokens/s, grouped mode; of examples/s, padded128 mode)."""
    path = Path(path)
    data = json.loads(path.read_text())
    if data.get("benchmark") != "train_step":
        raise ValueError(f"{path}: not a bench/train_step.py result (benchmark={data.get('benchmark')!r})")
    shapes = sorted({r["shape"] for r in data["results"]})
    if shape is None:
        shape = "bert-large" if "bert-large" in shapes else shapes[-1] if len(shapes) == 1 else None
        if shape is None:
            raise ValueError(f"{path}: several shapes {shapes}; choose one with --shape")
    if shape not in shapes:
        raise ValueError(f"{path}: no results for shape {shape!r}; it has {shapes}")
    ours: dict[str, list[float]] = {}
    base: dict[str, list[float]] = {}
    for r in data["results"]:
        if r["shape"] != shape:
            continue
        if r["mode"] == "grouped":
            ours.setdefault(r["method"], []).append(r["padded_tokens_per_s"])
        elif r["mode"] == "padded128":
            base.setdefault(r["method"], []).append(r["examples_per_s"])
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    packed = [r["speedup"] for r in data["results"]
              if r["shape"] == shape and r["mode"] == "packed" and r.get("speedup") is not None]
    fisher_ours = DEFAULT_THROUGHPUT["fisher"]["ours_samples_per_s"]
    fisher_base = DEFAULT_THROUGHPUT["fisher"]["baseline_samples_per_s"]
    if fisher_path is not None:
        f = json.loads(Path(fisher_path).read_text())
        rows = [r for r in f["results"] if r["scope"] == "all"]  # the fisher stage hooks all components
        if not rows:
            raise ValueError(f"{fisher_path}: no 'all'-scope results of bench/fisher.py")
        fisher_ours = mean([r["batched_samples_per_s"] for r in rows])
        fisher_base = mean([r["naive_samples_per_s"] for r in rows])
    machine = data.get("machine", {})
    device = machine.get("gpu") or f"{machine.get('cpu', 'cpu')} ({machine.get('torch_threads')} threads)"
    return Throughput(f"{path} (shape {shape})", device, {m: mean(v) for m, v in ours.items()},
                      {m: mean(v) for m, v in base.items()}, fisher_ours, fisher_base,
                      mean(packed) if packed else 1.0, bool(packed))


def describe_packing(config: dict, tp: Throughput) -> str:
    """How packs are priced, in words: which number is measured and which projected."""
    from lnpeft.pack_plan import pack_size

    if pack_size(config) <= 1:
        return "packing: off (training.pack_size 1, one job per run)"
    if tp.pack_measured:
        return (f"packing: training.pack_size {pack_size(config)}; a pack trains x{tp.pack_speedup:.2f} faster "
                f"than its runs one by one, measured ({tp.source})")
    return (f"packing: training.pack_size {pack_size(config)}; no packed measurement in {tp.source}, so a pack "
            "is projected at its runs' time one by one (no gain assumed; bench/train_step.py --packed "
            "measures it), saving only start-up")


# ---------------------------------------------------------------- the projection


def rows(config: dict, task: str, split: str = "train") -> int:
    """Rows of a task's split after the configured subsample (official GLUE sizes, or counted)."""
    n = task_rows(task)[split]
    key = "train" if split == "train" else ("test" if split.startswith("test") else "validation")
    cap = (config.get("data", {}).get("subsample") or {}).get(key)
    return min(n, cap) if cap else n


def _test_splits(config: dict, task: str) -> list[tuple[str, str]]:
    out = [(task, s) for s in get_task(task).test_splits]
    out += [(t, "test") for t in list(config["tasks"]) + ["ax"]
            if t != task and get_task(t).predicted_by == task]
    return out


@dataclass
class Cost:
    runs: int = 0
    jobs: int = 0
    """GPU jobs (a pack is one job for all its runs)."""
    train_examples: float = 0.0
    eval_examples: float = 0.0
    ours_s: float = 0.0
    baseline_s: float = 0.0
    asked_s: float = 0.0
    """The SLURM time limits the workflow requests at attempt 1 (lnpeft.runtime)."""

    def add(self, other: Cost) -> None:
        for k in ("runs", "jobs", "train_examples", "eval_examples", "ours_s", "baseline_s", "asked_s"):
            setattr(self, k, getattr(self, k) + getattr(other, k))


def run_cost(config: dict, tp: Throughput, task: str, method: str, epochs: int,
             dev_splits: list[str] | None = None, with_test: bool = True) -> Cost:
    """Seconds of one fine-tuning run, ours and baseline."""
    spec = get_task(task)
    max_len = config["training"]["max_length"]
    width = min(TOKENS.get(task, max_len), max_len)  # a custom task: padded to max_length
    train = rows(config, task, spec.train_split) * epochs
    dev = sum(rows(config, task, s) for s in (spec.dev_splits if dev_splits is None else dev_splits)) * epochs
    test_tokens = sum(rows(config, t, s) * min(TOKENS.get(t, max_len), max_len) for t, s in _test_splits(config, task)) \
        if with_test else 0.0
    test = sum(rows(config, t, s) for t, s in _test_splits(config, task)) if with_test else 0
    # the eager baseline is launch-bound: shorter max_length does not make it faster
    slow = min(1.0, 128 / max_len)
    ours = (train * width / tp.ours(method)
            + (dev * width + test_tokens) / (EVAL_SPEEDUP * tp.ours("full")))
    baseline = (train / (tp.baseline(method) * slow)
                + (dev + test) / (EVAL_SPEEDUP * tp.baseline("full") * slow))
    return Cost(runs=1, train_examples=train, eval_examples=dev + test, ours_s=ours, baseline_s=baseline)


def _asked(cost: Cost, minutes: int) -> Cost:
    """One GPU job asking for `minutes`."""
    cost.asked_s, cost.jobs = 60.0 * minutes, 1
    return cost


def estimate(config: dict, tp: Throughput) -> dict[str, Cost]:
    from lnpeft import runtime  # runtime prices requests with run_cost: imported here, not at the top
    from lnpeft.pack_plan import plan_packs

    tasks, seeds = list(config["tasks"]), list(config["seeds"])
    epochs = config["training"]["epochs"]
    stages = {name: Cost() for name in ("table2", "fractions", "drift", "fisher")}
    packs = plan_packs(config, tasks)
    for task in tasks:
        for method in config["methods"]:
            if packs and method != "full":
                continue  # priced with their packs below
            lrs = method_learning_rates(config, method)
            for _ in range(len({fmt_lr(x) for x in lrs}) * len(seeds)):
                stages["table2"].add(_asked(run_cost(config, tp, task, method, epochs),
                                            runtime.train_minutes(config, task, method)))
        fr = config.get("fractions", {})
        n = (len(fr.get("schemes", [])) * len({fmt_lr(x) for x in fr.get("values", [])})
             * len({fmt_lr(x) for x in fr.get("learning_rates", [])}) * len(fraction_seeds(config)))
        for _ in range(0 if packs else n):
            stages["fractions"].add(_asked(run_cost(config, tp, task, "fisher", epochs),
                                           runtime.train_minutes(config, task, "fisher")))
        spec = get_task(task)
        stages["drift"].add(_asked(run_cost(config, tp, task, "full", config["drift"]["epochs"],
                                            dev_splits=list(spec.dev_splits[:1]), with_test=False),
                                   runtime.drift_minutes(config, task)))
        cap = config.get("fisher", {}).get("max_samples")
        n = min(rows(config, task, "train"), cap or math.inf)
        stages["fisher"].add(_asked(Cost(runs=1, eval_examples=n, ours_s=n / tp.fisher_ours, baseline_s=n / tp.fisher_baseline),
                                    runtime.fisher_minutes(config, task)))
    for pack in packs:  # one job: its runs' time over the measured packing gain (1 if unmeasured)
        cost = Cost()
        for member in pack.members:
            cost.add(run_cost(config, tp, pack.task, member.method, epochs))
        cost.ours_s /= tp.pack_speedup
        methods = [m.method for m in pack.members]
        stages["table2" if pack.stage == "grid" else "fractions"].add(
            _asked(cost, runtime.pack_minutes(config, pack.task, methods)))
    return stages


def report(stages: dict[str, Cost], tp: Throughput, requests: str = "", packing: str = "") -> dict:
    """The stages and their total as JSON-ready numbers; `requests` says how the time limits were set."""
    total = Cost()
    for cost in stages.values():
        total.add(cost)
    rows = {name: {"runs": c.runs, "jobs": c.jobs, "train_examples": c.train_examples, "eval_examples": c.eval_examples,
                   "ours_hours": c.ours_s / 3600, "baseline_hours": c.baseline_s / 3600,
                   "requested_hours": c.asked_s / 3600}
            for name, c in {**stages, "total": total}.items()}
    return {"throughput": {"source": tp.source, "device": tp.device,
                           "ours_tokens_per_s": tp.ours_tokens_per_s,
                           "baseline_examples_per_s": tp.baseline_examples_per_s,
                           "fisher_ours_samples_per_s": tp.fisher_ours,
                           "fisher_baseline_samples_per_s": tp.fisher_baseline},
            "pack_speedup": tp.pack_speedup, "pack_speedup_measured": tp.pack_measured,
            "requests": requests, "packing": packing, "stages": rows}


def format_table(result: dict) -> str:
    tp = result["throughput"]
    lines = [f"device-hours on {tp['device']} (throughput: {tp['source']}); requested: the SLURM time "
             f"limits at attempt 1 ({result['requests']})",
             result.get("packing", ""),
             f"{'stage':<10} {'runs':>6} {'jobs':>5} {'train ex (M)':>13} {'ours h':>10} {'baseline h':>11} {'speed-up':>9} "
             f"{'requested h':>12}"]
    for name, r in result["stages"].items():
        speed = r["baseline_hours"] / r["ours_hours"] if r["ours_hours"] else float("nan")
        if name == "total":
            lines.append("-" * len(lines[2]))
        lines.append(f"{name:<10} {r['runs']:>6} {r['jobs']:>5} {r['train_examples'] / 1e6:>13.2f} {r['ours_hours']:>10.2f} "
                     f"{r['baseline_hours']:>11.2f} {speed:>8.2f}x {r['requested_hours']:>12.1f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", type=Path, action="append", default=[],
                        help="config file (repeat for overlays, later ones win; default: config.yaml)")
    parser.add_argument("--throughput", type=Path,
                        help="bench/out/train_step.json measured on the target card (default: the config's "
                        "resources.throughput, else issue 7's H200)")
    parser.add_argument("--fisher-throughput", type=Path, help="bench/out/fisher.json of the same card")
    parser.add_argument("--shape", help="model shape in the throughput file (bert-large, minilm, tiny)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.configfile or [Path("config.yaml")])
    from lnpeft import runtime

    if args.throughput is not None:
        tp = read_throughput(args.throughput, args.shape, args.fisher_throughput)
    else:
        if args.fisher_throughput is not None or args.shape is not None:
            raise ValueError("--fisher-throughput and --shape need --throughput")
        tp = runtime.measured(config) or default_throughput()  # the config's resources.throughput first

    result = report(estimate(config, tp), tp, runtime.describe(config), describe_packing(config, tp))
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else format_table(result))
    return 0
