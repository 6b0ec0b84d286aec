"""What a stage's CPU numbers depend on beyond its inputs, pinned in one place.

A float sum depends on its order, and on CPU the order of torch's reductions and of MKL's matrix
products depends on how many threads split them. Two settings decide that count:

- torch's intra-op threads. Snakemake exports OMP_NUM_THREADS = the job's `threads`, but a stage
  that never calls `torch.set_num_threads` leaves MKL in its default *dynamic* mode (MKL_VERBOSE
  shows `Dyn:1`): MKL then picks the threads of each product itself, and most products of a
  Fisher or drift job ran on 1 thread, some on 2 (`NThr:1` / `NThr:2`). `torch.set_num_threads`
  turns dynamic mode off (`Dyn:0`): every product uses exactly the pinned count.
- MKL's conditional numerical reproducibility (CNR). Without it MKL may choose kernels and work
  splits at run time (memory alignment, load balancing); `MKL_CBWR=AUTO,STRICT` fixes both for a
  given thread count. MKL reads it once, when it initialises, so it must be in the environment
  before the first matrix product: `lnpeft.cli` sets it before importing any stage.

What stays true: the same inputs, threads, torch/MKL build and CPU family give bit-identical
numbers. Another thread count or CPU family gives numbers equal to float rounding, not bits;
CUDA runs are not bit-reproducible (atomics in index_add / scatter backward, cuBLAS split-K).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# setdefault: a user who sets one of these on purpose (e.g. MKL_CBWR=COMPATIBLE) keeps it
REPRODUCIBLE_ENV: dict[str, str] = {"MKL_CBWR": "AUTO,STRICT"}


def set_reproducible_env(environ: MutableMapping[str, str] = os.environ) -> None:
    """Put MKL's CNR setting in the environment (before MKL initialises: see the module doc)."""
    for key, value in REPRODUCIBLE_ENV.items():
        environ.setdefault(key, value)


def resolve_threads(threads: int | None, environ: MutableMapping[str, str] = os.environ) -> int:
    """The thread count a stage pins: `threads` if given, else OMP_NUM_THREADS (Snakemake sets it
    to the job's threads), else torch's default (the machine's physical cores)."""
    if threads is None:
        text = environ.get("OMP_NUM_THREADS", "").strip()
        if text.isdigit():
            threads = int(text)
        else:
            import torch

            threads = torch.get_num_threads()
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    return threads


def pin_threads(threads: int | None) -> int:
    """Pin torch's (and so MKL's) CPU threads for the rest of the process; returns the count.

    Always calls `torch.set_num_threads`, even with the count torch already has: that call is
    what turns MKL's dynamic thread choice off.
    """
    import torch

    set_reproducible_env()  # too late if MKL already ran; lnpeft.cli sets it first
    n = resolve_threads(threads)
    torch.set_num_threads(n)
    return n
