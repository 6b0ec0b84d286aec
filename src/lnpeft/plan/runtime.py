"""Time limits of the GPU jobs (the SLURM `runtime` resource, minutes at attempt 1, times `attempt`).

With `resources.throughput` naming a bench/train_step.py JSON measured on the cluster's GPU, a job
asks for `resources.startup_minutes` plus `resources.margin` times the time `lnpeft estimate`
projects for it from those numbers (lnpeft.plan.cost.run_cost: the same rows, epochs, padded
widths and evaluation passes). Without one, a conservative fixed rate: 150 training and 600
evaluation examples per second (BERT-large, length 128, an A100-class GPU, rounded down) plus 15
minutes, slowed for a model larger than BERT-large by its FLOPs (`size_factor`). A run killed at
its limit resumes from its last epoch checkpoint, so a short request loses at most one epoch; a
retry asks for `attempt` times as much.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

from lnpeft.data.tasks import get_task, task_rows
from lnpeft.plan.cost import Throughput, read_throughput, rows, run_cost
from lnpeft.plan.workflow_config import for_task, local_model_config

TRAIN_PER_S = 150
"""Conservative training examples per second (forward and backward)."""
EVAL_PER_S = 600
"""Conservative evaluation examples per second (forward only)."""
FISHER_PER_S = 100
"""Conservative per-sample-gradient examples per second."""


def size_factor(config: dict) -> float:
    """How many times BERT-large's time the config's model takes at the conservative rate: its N
    over BERT-large's (FLOPs per token are proportional to N, lnpeft.plan.cost) where its
    config.json can be read now, else 1; never below 1, as a small model is launch-bound rather
    than proportionally faster."""
    from lnpeft.model.size import bert_large_flop_params, flop_params_of

    found = local_model_config(config)
    if found is None:
        return 1.0
    return max(1.0, flop_params_of(found[0]) / bert_large_flop_params())


LOAD_COPIES = 1.5
"""Host memory of loading a model, in fp32 copies of its parameters: the tensors, plus what a load
or a cast holds beside them for a while (a margin, not a measurement)."""


def host_memory_mb(config: dict, floor_mb: int, attempt: int = 1) -> int:
    """Host memory (MB) of a job that loads the model in fp32 (init; a GPU job before it moves the
    model): LOAD_COPIES x 4 bytes per parameter + 2 GB, where the model's config.json can be read
    now, never below `floor_mb` (what such a job asks of a BERT-sized model); x the attempt."""
    from lnpeft.model.size import all_params_of

    found = local_model_config(config)
    need = 0 if found is None else math.ceil(LOAD_COPIES * 4 * all_params_of(found[0]) / 1e6) + 2048
    return max(floor_mb, need) * attempt


def _epoch_seconds(config: dict, task: str) -> float:
    """One epoch at the conservative rate: train once, then predict every dev and test split."""
    evals = sum(rows(config, task, s) for s in task_rows(task) if s != "train")
    return (rows(config, task) / TRAIN_PER_S + evals / EVAL_PER_S) * size_factor(config)


@lru_cache(maxsize=8)
def _read(path: str, fisher: str | None, shape: str | None) -> Throughput:
    return read_throughput(Path(path), shape, Path(fisher) if fisher else None)


def measured(config: dict) -> Throughput | None:
    """The throughput of `resources.throughput` (and `fisher_throughput`), or None."""
    res = config.get("resources") or {}
    if not res.get("throughput"):
        return None
    return _read(str(res["throughput"]), res.get("fisher_throughput"), res.get("shape"))


def _fit(config: dict, seconds: float, attempt: int) -> int:
    res = config.get("resources") or {}
    return int((res.get("startup_minutes", 10) + res.get("margin", 2.0) * seconds / 60) * attempt)


def train_minutes(config: dict, task: str, method: str, attempt: int = 1) -> int:
    """One fine-tuning run of `method` (`fisher` for a Fisher-subset run)."""
    config = for_task(config, task)
    epochs = config["training"]["epochs"]
    tp = measured(config)
    if tp is None:
        return int((15 + epochs * _epoch_seconds(config, task) / 60) * attempt)
    return _fit(config, run_cost(config, tp, task, method, epochs).ours_s, attempt)


def pack_minutes(config: dict, task: str, methods: list[str], attempt: int = 1) -> int:
    """A pack of runs of `methods` (`fisher` for Fisher-subset runs): its runs one after another,
    with one start-up, over the packing gain the throughput file measured (`pack_speedup`; none
    measured: 1, an upper bound)."""
    config = for_task(config, task)
    epochs = config["training"]["epochs"]
    tp = measured(config)
    if tp is None:
        return int((15 + len(methods) * epochs * _epoch_seconds(config, task) / 60) * attempt)
    return _fit(config, sum(run_cost(config, tp, task, m, epochs).ours_s for m in methods) / tp.pack_speedup,
                attempt)


def drift_minutes(config: dict, task: str, attempt: int = 1) -> int:
    """The full fine-tune behind Figure 1 (first dev split each epoch, no test predictions)."""
    config = for_task(config, task)
    epochs = config["drift"]["epochs"]
    tp = measured(config)
    if tp is None:
        return int((15 + epochs * _epoch_seconds(config, task) / 60) * attempt)
    dev = list(get_task(task).dev_splits[:1])
    return _fit(config, run_cost(config, tp, task, "full", epochs, dev_splits=dev, with_test=False).ours_s, attempt)


def fisher_minutes(config: dict, task: str, attempt: int = 1) -> int:
    """One pass of per-sample gradients over `fisher.max_samples` training rows."""
    config = for_task(config, task)
    n = min(rows(config, task), config["fisher"].get("max_samples") or math.inf)
    tp = measured(config)
    if tp is None:
        return int((10 + n / FISHER_PER_S * size_factor(config) / 60) * attempt)
    return _fit(config, n / tp.fisher_ours, attempt)


# GPU memory of a job, an estimate until bench/gpu_check.sh measures it: BERT-large at batch 32 and
# 128 tokens is taken to fit 16 GB in fp32 (README's claim, not yet measured on a GPU), which puts
# a run's activations at ~105 bytes per token, layer and hidden unit; frozen weights are held once
# per job, so a pack of G adds G runs' activations, not G models.
ACTIVATION_BYTES = 105
"""Training activations per token x layer x hidden unit, fp32 (bf16 autocast stores about half)."""
BERT_LARGE = {"layers": 24, "hidden": 1024, "params": 335_000_000}
"""The shape assumed when the model's config.json cannot be read before any job (a hub model not
yet cached)."""


def gpu_memory_mb(config: dict, task: str, members: int = 1, full: bool = False) -> int:
    """GPU memory a job of `members` runs needs (MB, rounded up): the weights once, AdamW's state
    and gradients of what is trained (all of it for full fine-tuning), each run's activations."""
    config = for_task(config, task)
    shape = model_shape(config)
    training = config["training"]
    tokens = training["batch_size"] * training["max_length"]
    activations = members * ACTIVATION_BYTES * tokens * shape["layers"] * shape["hidden"]
    # fp32 weights, gradients and two AdamW moments (full); else the weights in model.dtype (bfloat16: 2 bytes)
    held = 2 if config["model"].get("dtype", "float32") == "bfloat16" else 4
    weights = 4 * 4 * shape["params"] if full else held * shape["params"]
    return math.ceil((weights + activations) / 1e6) + 1024  # + 1 GB for the CUDA context and allocator


def model_shape(config: dict) -> dict[str, int]:
    """Layers, hidden size and parameter count from the model's config.json when it can be read
    now (a folder, a package, a cached hub model), else BERT-large's."""
    found = local_model_config(config)
    if found is None:
        return BERT_LARGE
    c = found[1]
    layers = c.get("num_hidden_layers") or c.get("n_layers") or BERT_LARGE["layers"]
    hidden = c.get("hidden_size") or c.get("dim") or BERT_LARGE["hidden"]
    inter = c.get("intermediate_size") or c.get("hidden_dim") or 4 * hidden
    vocab = c.get("vocab_size", 30_000)
    return {"layers": layers, "hidden": hidden,
            "params": layers * (4 * hidden * hidden + 2 * hidden * inter) + vocab * hidden}


def describe(config: dict) -> str:
    """How the time limits are set, in words (for `lnpeft estimate`)."""
    tp = measured(config)
    if tp is None:
        factor = size_factor(config)
        size = f", x{factor:.1f} for the model's size (its FLOPs over BERT-large's)" if factor > 1 else ""
        return (f"projected at a conservative {TRAIN_PER_S} training and {EVAL_PER_S} evaluation examples/s"
                f"{size} + 15 min; set resources.throughput to a bench JSON of your GPU to ask for what it "
                "measures")
    res = config.get("resources") or {}
    return (f"measured: {tp.source}, x{res.get('margin', 2.0):g} + {res.get('startup_minutes', 10):g} min "
            "per job")
