"""Atomic writes: nothing half-written is ever left looking complete, and a killed writer's
temporary file is cleaned up by the next write."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lnpeft.artifacts import _HOST, atomic_path


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "state.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        files = {
            "dead": tmp_path / f".state.safetensors.{_HOST}-{dead_pid}.abc123.tmp",
            "live": tmp_path / f".state.safetensors.{_HOST}-{live.pid}.def456.tmp",
            "other host": tmp_path / f".state.safetensors.othernode-{dead_pid}.ghi789.tmp",
            "other file": tmp_path / f".run.json.{_HOST}-{dead_pid}.jkl012.tmp",
        }
        for f in files.values():
            f.write_text("partial")
        with atomic_path(target) as tmp:
            assert tmp.name.startswith(f".state.safetensors.{_HOST}-{os.getpid()}.")
            tmp.write_text("complete")
        assert target.read_text() == "complete"
        assert not files["dead"].exists()
        assert files["live"].exists() and files["other host"].exists() and files["other file"].exists()
    finally:
        live.kill()
        live.wait()
