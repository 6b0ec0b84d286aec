"""Errors that carry a fix: the CLI prints lnpeft's own exceptions as one line."""

from __future__ import annotations

import errno
from pathlib import Path

# What the libraries that write our files say when the disk is full: Python and pyarrow raise
# OSError(ENOSPC); safetensors (Rust) raises its own error with the OS text; torch.save raises a
# RuntimeError whose __context__ holds the OSError of the file object it wrote to.
_DISK_FULL_TEXT = {
    errno.ENOSPC: ("no space left on device", f"os error {errno.ENOSPC})"),
    errno.EDQUOT: ("disk quota exceeded", f"os error {errno.EDQUOT})"),
}


EXIT_DETERMINISTIC = 3
"""Exit status of a failure that the same inputs reproduce (a non-finite loss, out of GPU memory at
the same size, inputs that do not belong together): a retry with more time cannot help."""


class LnpeftError(Exception):
    """An expected failure: `lnpeft` prints it as one clear line, exit status 2, no traceback."""

    deterministic = False
    """The same inputs fail the same way (exit EXIT_DETERMINISTIC)."""


class UserTaskError(ValueError):
    """A custom task definition or file that cannot be used; the message names the key or row."""


class RecordedFailure(LnpeftError):
    """A retry of a job whose run failed deterministically: it fails at once with the recorded
    message instead of training again to the same failure."""

    deterministic = True


class NonFiniteOutputError(FloatingPointError):
    """A model gave NaN or infinite outputs: no metric or prediction is made from them."""

    deterministic = True


class OutOfMemoryError(RuntimeError):
    """Out of (GPU or host) memory; the message names the run, the step and the knob to turn."""

    deterministic = True  # the same batch on the same GPU runs out again


class DiskFullError(OSError):
    """No space (or quota) left while writing an output file; the message names the file and the fix.

    Build it with `DiskFullError.writing(path, code)`: its str() is that one line.
    """

    @classmethod
    def writing(cls, path: Path | str, code: int = errno.ENOSPC) -> DiskFullError:
        folder = Path(path).parent
        if code == errno.EDQUOT:
            fix = f"free space or ask for a larger quota (quota -s; df -h {folder}) and rerun"
        else:
            fix = f"free space (df -h {folder}) and rerun"
        return cls(code, f"{path}: {_DISK_FULL_TEXT[code][0]} while writing; {fix}", str(path))

    def __str__(self) -> str:
        return str(self.strerror)


def disk_full_code(err: BaseException) -> int | None:
    """ENOSPC or EDQUOT if `err`, or an exception it was raised from, says the disk is full."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _DISK_FULL_TEXT:
            return err.errno
        text = str(err).lower()
        for code, phrases in _DISK_FULL_TEXT.items():
            if any(p in text for p in phrases):
                return code
        err = err.__cause__ or err.__context__
    return None


def is_oom(err: BaseException) -> bool:
    import torch  # here, not at the top: artifacts imports this module and must stay light

    # torch raises torch.OutOfMemoryError on CUDA; other allocators raise a plain RuntimeError
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def quote(value: object, limit: int = 80) -> str:
    """repr(value), cut in the middle to about `limit` characters with the length said."""
    text = repr(value)
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}...{text[-half:]} ({len(text)} characters)"
