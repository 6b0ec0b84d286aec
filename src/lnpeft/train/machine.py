"""What a job ran on, in words: recorded in run.json by each run, so a write-up states the
machines its results came from, not the one that wrote it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; elsewhere what the platform says, or "unknown")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe(device: torch.device | None = None) -> str:
    """E.g. "2 logical CPUs (AMD EPYC 9R14), Linux x86_64", and the GPU where `device` is one: no
    host name, so runs on a cluster's identical nodes read the same."""
    text = f"{os.cpu_count()} logical CPUs ({cpu_model()}), {platform.system()} {platform.machine()}"
    if device is not None and device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text
