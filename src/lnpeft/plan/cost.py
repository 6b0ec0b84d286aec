"""What one run costs in accelerator seconds: the throughput it is priced at and the rows, padded
widths, epochs and evaluation passes of a run. `lnpeft estimate` sums these over a grid; the SLURM
time limits (`lnpeft.plan.runtime`) ask for them with a margin.

The throughput is measured by bench/train_step.py on the target card and model shape, or else
issue 7's H200 numbers for BERT-large, moved to the config's model by FLOPs (`price_by_flops`):
a step costs 6N FLOPs per token for full fine-tuning, 4N for a parameter-efficient method and 2N
for evaluation, N the parameters a token passes through (`lnpeft.model.size`), at the FLOP/s
BERT-large achieved. Where the model's config.json cannot be read yet (a hub model not cached),
BERT-large's numbers are used as they are, and the estimate says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from lnpeft.data.tasks import get_task, task_rows
from lnpeft.plan.workflow_config import for_task, local_model_config, model_config_path

# FLOPs per token in multiples of N: a forward multiplies each parameter once (2N); a full step's
# backward forms the activation gradients (2N) and the weight gradients (2N); a parameter-efficient
# step (layernorm, bitfit, random, fisher) still back-propagates through the frozen matrices but
# forms none of their weight gradients. Attention's length-dependent term is left out (~1% of 2N
# for BERT-large at 128 tokens).
FLOPS_PER_TOKEN: dict[str, int] = {"full": 6, "peft": 4, "eval": 2}

EVAL_SPEEDUP = FLOPS_PER_TOKEN["full"] / FLOPS_PER_TOKEN["eval"]
"""Forward-only tokens/s relative to a full training step: 6N / 2N = 3."""


def flops_per_token(method: str) -> int:
    """A training step's FLOPs per token of `method`, in multiples of N."""
    return FLOPS_PER_TOKEN["full" if method == "full" else "peft"]


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
# weight gradient (random's scattered matrix entries train through lnpeft.model.partial_tensors at
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
    pricing: str = "issue 7's BERT-large throughput, as measured"
    """How the numbers were set for the config's model, in words (the estimate prints it)."""
    model_params: int | None = None
    """N of the model the numbers were moved to by FLOPs (`price_by_flops`); None: not moved."""

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
    """Issue 7's numbers, for BERT-large (`model_throughput` moves them to the config's model)."""
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
    packed = [r for r in data["results"]
              if r["shape"] == shape and r["mode"] == "packed" and r.get("speedup") is not None]
    largest = max((r.get("pack_size", 0) for r in packed), default=0)
    packed = [r["speedup"] for r in packed if r.get("pack_size", 0) == largest]  # the largest pack measured
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
                      mean(packed) if packed else 1.0, bool(packed),
                      pricing=f"priced by measured throughput: {path} (shape {shape}), used as measured")


def _size(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n:,}"


def price_by_flops(tp: Throughput, n_params: int, where: str = "") -> Throughput:
    """`tp`, measured at BERT-large, moved to a model of `n_params` (`lnpeft.model.size.flop_params`):
    each method keeps the FLOP/s it achieved at BERT-large (its FLOPs per token x BERT-large's N x
    its tokens/s) and spends its FLOPs per token x `n_params`. The eager baseline's examples/s and
    the Fisher pass's samples/s move by the same ratio (their FLOPs per example are N-proportional
    too). Kernel launches do not shrink with N, so for a model much smaller than BERT-large this is
    a lower bound on the time."""
    from lnpeft.model.size import bert_large_flop_params

    if n_params <= 0:
        raise ValueError(f"{where or 'model'}: {n_params} parameters outside the embedding tables")
    ref = bert_large_flop_params()
    achieved = {m: flops_per_token(m) * ref * v for m, v in tp.ours_tokens_per_s.items()}
    ours = {m: flops / (flops_per_token(m) * n_params) for m, flops in achieved.items()}
    ratio = ref / n_params
    tflops = ", ".join(f"{m} {flops / 1e12:.0f}" for m, flops in achieved.items())
    pricing = (f"priced by FLOPs: model N = {_size(n_params)} parameters outside the embedding tables"
               f"{f' ({where})' if where else ''}, 6N/4N/2N FLOPs per token (full / parameter-efficient / "
               f"evaluation), at BERT-large's achieved FLOP/s on {tp.device} (N = {_size(ref)}; "
               f"{tflops} TFLOP/s)")
    return replace(tp, ours_tokens_per_s=ours,
                   baseline_examples_per_s={m: v * ratio for m, v in tp.baseline_examples_per_s.items()},
                   fisher_ours=tp.fisher_ours * ratio, fisher_baseline=tp.fisher_baseline * ratio,
                   pricing=pricing, model_params=n_params)


def model_throughput(config: dict) -> Throughput:
    """Issue 7's BERT-large numbers priced for the config's model by FLOPs, where its config.json
    can be read now; else as they are, saying why."""
    from lnpeft.model.size import flop_params_of

    found = local_model_config(config)
    if found is None:
        return replace(default_throughput(), pricing=(
            f"priced at BERT-large's throughput as measured, whatever the model: {model_config_path(config)} "
            "cannot be read yet (a hub model's is there once the cache_checkpoint rule has run)"))
    return price_by_flops(default_throughput(), flop_params_of(found[0]), str(found[0]))


def rows(config: dict, task: str, split: str = "train") -> int:
    """Rows of a task's split after its configured subsample (official GLUE sizes, or counted)."""
    config = for_task(config, task)
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
    """The SLURM time limits the workflow requests at attempt 1 (lnpeft.plan.runtime)."""

    def add(self, other: Cost) -> None:
        for k in ("runs", "jobs", "train_examples", "eval_examples", "ours_s", "baseline_s", "asked_s"):
            setattr(self, k, getattr(self, k) + getattr(other, k))


def run_cost(config: dict, tp: Throughput, task: str, method: str, epochs: int,
             dev_splits: list[str] | None = None, with_test: bool = True) -> Cost:
    """Seconds of one fine-tuning run, ours and baseline (its task's settings: `for_task`)."""
    spec = get_task(task)
    max_len = for_task(config, task)["training"]["max_length"]
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
