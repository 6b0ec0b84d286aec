"""`lnpeft <stage>`: one console command per workflow stage.

Each stage module exposes `add_arguments(parser)` and `run(args) -> int | None`. Modules are
imported only for the command being run, so `lnpeft --help` stays fast (no torch import).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lnpeft.errors import EXIT_DETERMINISTIC, LnpeftError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-data": ("lnpeft.data.prepare", "read one GLUE task (TSV folder or hub) into parquet"),
    "cache-model": ("lnpeft.model.checkpoint", "cache a checkpoint (hub, folder or package) with a manifest"),
    "init": ("lnpeft.model.init", "pretrained encoder + seeded classification head for (task, seed)"),
    "params": ("lnpeft.model.methods", "count total and trainable parameters of a method"),
    "finetune": ("lnpeft.train.finetune", "one fine-tuning run of (task, method, lr, seed)"),
    "finetune-pack": ("lnpeft.train.finetune_pack", "several parameter-efficient runs of one (task, seed) in one job"),
    "collect-run": ("lnpeft.train.collect_run", "put one run of a pack at its results/runs/ folder"),
    "drift": ("lnpeft.analysis.drift", "per-component change D between two models (paper Eq. 1)"),
    "fisher": ("lnpeft.analysis.fisher", "empirical Fisher information at init (paper Eq. 2)"),
    "masks": ("lnpeft.analysis.masks", "rank LayerNorm entries by a Fisher mask scheme"),
    "tables": ("lnpeft.report.tables", "aggregate runs into scores.parquet and Tables 1-3"),
    "figure": ("lnpeft.report.figures", "draw one of the paper's figures, or the learning curves"),
    "table1": ("lnpeft.report.table1", "rank components by normalised Fisher (Table 1)"),
    "stats": ("lnpeft.report.stats", "Kruskal-Wallis and Wilcoxon tests between two methods"),
    "submission": ("lnpeft.report.submission", "write the GLUE test submission zip"),
    "validate-submission": ("lnpeft.report.validate", "strictly check a GLUE submission zip"),
    "table3": ("lnpeft.report.table3", "Table 3 test scores (GLUE server results or labelled test data)"),
    "estimate": ("lnpeft.plan.estimate", "project the GPU-hours of a config's grid"),
    "progress": ("lnpeft.report.progress", "what a grid's finished runs say while the rest still run"),
    "evidence": ("lnpeft.report.evidence", "a reproduction's finished results small enough to commit, and back"),
    "summary": ("lnpeft.report.summary", "dev scores beside each task's trivial baseline, in a few lines"),
    "export": ("lnpeft.model.export", "a run as a save_pretrained model and, for LayerNorm runs, a PEFT adapter"),
    "writeup": ("lnpeft.report.writeup", "a reproduction's write-up (markdown, figures) from its results"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lnpeft",
        description="LayerNorm parameter-efficient fine-tuning: workflow stages.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {c:<20} {h}" for c, (_, h) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command")
    parser.add_argument("--version", action="version", version=f"lnpeft {_version()}")
    return parser


def _version() -> str:
    from lnpeft import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv or ["--help"])
        return 2
    command, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[command]
    # before any stage imports torch: MKL reads its reproducibility setting once (lnpeft.numerics)
    from lnpeft.numerics import set_reproducible_env

    set_reproducible_env()
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"lnpeft {command}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except Exception as err:
        # lnpeft's own failures (bad input, a missing file, a non-finite loss, out of memory with
        # its hint) are one clear line; anything raised inside torch, transformers or another
        # library keeps its traceback, which is what its bug report needs. LNPEFT_DEBUG=1 shows all.
        if not is_lnpeft_error(err) or os.environ.get("LNPEFT_DEBUG"):
            raise
        print(f"lnpeft {command}: error: {err}", file=sys.stderr)
        if getattr(err, "deterministic", False):
            return EXIT_DETERMINISTIC  # retrying with the same inputs fails the same way
        return 2


PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def is_lnpeft_error(err: BaseException) -> bool:
    """An error lnpeft raised on purpose: one of its own classes, or a ValueError/OSError raised by
    lnpeft's code itself (the innermost frame of its traceback is in the lnpeft package)."""
    if isinstance(err, LnpeftError) or type(err).__module__.startswith("lnpeft."):
        return True
    if not isinstance(err, (ValueError, OSError)):
        return False
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    raised_in = os.path.abspath(tb.tb_frame.f_code.co_filename) if tb is not None else ""
    return raised_in.startswith(PACKAGE_DIR + os.sep)


if __name__ == "__main__":
    sys.exit(main())
