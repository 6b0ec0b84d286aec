"""Shared set-up: MKL's reproducible mode for every test process, and a disk that fills up in the
middle of writing an output."""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path

import pytest

from lnpeft.numerics import set_reproducible_env

# MKL reads MKL_CBWR once, at its first matrix product. `lnpeft.cli` sets it before a stage runs,
# but a test process has run products long before its in-process cli.main calls: without this, an
# in-process run (no CNR) and a CLI subprocess (CNR) take different MKL code paths
# and may differ in the last bit (test_faults' resume-equals-uninterrupted check did, under load).
set_reproducible_env()


class _FillingFile:
    """A real open file whose writes stop with OSError(ENOSPC) once the disk's room is used up.

    The bytes that still fit land on disk first (a short write, then the error, as the kernel
    does), so a partial temporary file really exists when the writer fails."""

    def __init__(self, fh, disk: FullDisk, path: Path):
        self._fh, self._disk, self._path = fh, disk, path

    def write(self, data):
        room = self._disk.room
        if len(data) <= room:
            self._disk.room -= len(data)
            return self._fh.write(data)
        self._fh.write(data[:room])
        self._fh.flush()
        self._disk.room = 0
        self._disk.partial.append((self._path, self._path.stat().st_size))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


class FullDisk:
    """Once `fill_after(n)` is called, files opened for writing under `root` inside a temporary
    path (a name `.*.tmp`, what atomic_path and atomic_dir write) get `n` more bytes in all.
    `partial` lists (temporary file, its size) at each failed write."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path):
        self._monkeypatch, self._root = monkeypatch, root
        self.room = 0
        self.partial: list[tuple[Path, int]] = []

    def _is_temporary(self, path: Path) -> bool:
        try:
            parts = path.resolve().relative_to(self._root.resolve()).parts
        except ValueError:
            return False
        return any(p.startswith(".") and p.endswith(".tmp") for p in parts)

    def fill_after(self, nbytes: int) -> FullDisk:
        self.room = nbytes
        real_open = builtins.open

        def open_on_full_disk(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            writing = any(c in mode for c in "wax+")
            if writing and isinstance(file, (str, os.PathLike)) and self._is_temporary(Path(file)):
                return _FillingFile(fh, self, Path(file))
            return fh

        # pathlib's write_text/write_bytes call io.open; plain open() is builtins.open
        self._monkeypatch.setattr(builtins, "open", open_on_full_disk)
        self._monkeypatch.setattr(io, "open", open_on_full_disk)
        return self


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FullDisk:
    """A disk under tmp_path that fills up after `full_disk.fill_after(n)` more bytes."""
    return FullDisk(monkeypatch, tmp_path)
