"""torch.compile's on-disk caches, shared by a workflow's jobs.

Inductor keeps compiled graphs (and AOTAutograd its traced backward) in the folder
`$TORCHINDUCTOR_CACHE_DIR`, by default a node-local /tmp folder that a cluster job often does not
keep. The workflow points every job at one folder on the shared disk (`training.compile_cache`), so
a job whose model and method an earlier job compiled reads the compiled graphs instead of compiling
again (over a minute for BERT-large on an H200: docs/performance.md). run.json records what the
cache gave each compiled run."""

from __future__ import annotations

from pathlib import Path

ENV = "TORCHINDUCTOR_CACHE_DIR"


def cache_folder(configured: str | None) -> str | None:
    """The folder the jobs share: the configured path made absolute (jobs may start in other
    folders), or None to leave torch's own choice ($TORCHINDUCTOR_CACHE_DIR, else its /tmp folder).
    The config wins over the variable: torch itself sets the variable, to its default, in any
    process that has compiled, so a set variable does not say that a user chose it."""
    return str(Path(configured).resolve()) if configured else None


def cache_report() -> dict:
    """Where the compiled graphs came from in this process: hits and misses of Inductor's graph cache
    and of AOTAutograd's cache, and the folder (torch's own counters; empty before a compile)."""
    from torch._dynamo.utils import counters  # torch's counters: the only record of cache use
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    inductor, aot = counters["inductor"], counters["aot_autograd"]
    return {"dir": cache_dir(), "graph_hits": inductor["fxgraph_cache_hit"],
            "graph_misses": inductor["fxgraph_cache_miss"], "autograd_hits": aot["autograd_cache_hit"],
            "autograd_misses": aot["autograd_cache_miss"]}
