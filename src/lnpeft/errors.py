"""Errors that carry a fix: the CLI prints lnpeft's own exceptions as one line."""

from __future__ import annotations

import torch


class OutOfMemoryError(RuntimeError):
    """Out of (GPU or host) memory; the message names the run, the step and the knob to turn."""


def is_oom(err: BaseException) -> bool:
    # torch raises torch.OutOfMemoryError on CUDA; other allocators raise a plain RuntimeError
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
