"""lnpeft.cli: lnpeft's own errors are one line; a library's error keeps its traceback."""

from __future__ import annotations

import pytest

from lnpeft import cli


def test_lnpeft_value_error_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.parquet"
    rc = cli.main(["masks", "--fisher", f"rte={missing}", "--scheme", "individual", "--task", "rte",
                   "--out", str(tmp_path / "m.parquet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("lnpeft masks: error: ") and str(missing) in err[0]


def test_a_library_value_error_keeps_its_traceback(monkeypatch):
    """An error raised inside a library (a shape error in torch, a ValueError in numpy) is a bug
    report's material, not a user mistake: it propagates with its traceback instead of one line
    (every ValueError used to become one line)."""
    import torch

    from lnpeft.analysis import masks

    def run(args):
        torch.zeros(2, 3) @ torch.zeros(2, 3)  # RuntimeError inside torch
        return 0

    monkeypatch.setattr(masks, "run", run)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        cli.main(["masks", "--fisher", "rte=x", "--scheme", "individual", "--task", "rte", "--out", "o"])
    import numpy as np

    monkeypatch.setattr(masks, "run", lambda args: np.array([1, 2]).reshape(3))
    with pytest.raises(ValueError, match="cannot reshape"):
        cli.main(["masks", "--fisher", "rte=x", "--scheme", "individual", "--task", "rte", "--out", "o"])


def test_is_lnpeft_error_looks_at_where_it_was_raised():
    from lnpeft.data.metrics import compute_metrics
    from lnpeft.data.tasks import get_task

    try:
        compute_metrics(get_task("rte"), [0, 1], [0])  # lnpeft's own check
    except ValueError as err:
        assert cli.is_lnpeft_error(err)
    try:
        int("x")
    except ValueError as err:
        assert not cli.is_lnpeft_error(err)  # raised here, in the test: not lnpeft's
    assert cli.is_lnpeft_error(cli.LnpeftError("any"))
