"""Stage `data`: one GLUE task (from a glue_data/ TSV folder or the hub) or custom task (its own
files, lnpeft.data.user_tasks) into typed parquet.

`lnpeft prepare-data --task rte --glue-dir glue_data --out results/data/rte` writes
`results/data/rte/{train,validation,test}.parquet` (columns idx, text_a, text_b, label; label null
on test) and `MANIFEST.json`: the source and its sha256s, per split the rows read, kept and
skipped (file and line), empty texts, and the seeded subsample. Every split is read and checked
before anything is written, so a failure leaves no parquet behind.

`--held-out-validation N` / `--held-out-test M` (config `data.held_out`) take a task's dev or test
split from its training file instead of the split's own file, for a copy of GLUE that has only a
training file (QQP and MNLI in a partial glue_data/): N (and M) seeded training rows, disjoint, no
longer trained on; the training subsample is drawn from the rows left. The manifest records it.
"""

from __future__ import annotations

import argparse
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lnpeft.data import glue_tsv, user_tasks
from lnpeft.data.row_files import file_format
from lnpeft.data.artifacts import write_json, write_parquet
from lnpeft.data.tasks import TaskSpec, get_task

DEFAULT_HUB_PATH = "nyu-mll/glue"


@dataclass(frozen=True)
class DataConfig:
    task: str
    """lnpeft task name (cola, sst2, ..., ax)."""
    out: str
    """Output folder: {split}.parquet per split + MANIFEST.json."""
    glue_dir: str | None = None
    """A classic glue_data/ folder (source tsv); None reads the hub."""
    hub_path: str = DEFAULT_HUB_PATH
    """load_dataset path: a hub repo id or a local dataset folder (source hub)."""
    max_bad_rows: int = 0
    """Malformed TSV rows tolerated per file (skipped and recorded); more is an error."""
    empty_text: str = "report"
    """report: count empty texts in the manifest; error: fail on the first one."""
    subsample_train: int | None = None
    subsample_validation: int | None = None
    """Rows kept of each dev split."""
    subsample_test: int | None = None
    """Rows kept of each test split."""
    seed: int = 0
    """Seed of the subsampling."""
    held_out_validation: int | None = None
    """Rows of the training file held out as the dev split (its file is not read)."""
    held_out_test: int | None = None
    """Rows of the training file held out as the test split, labels kept (its file is not read)."""

    def __post_init__(self) -> None:
        if self.empty_text not in ("report", "error"):
            raise ValueError(f"empty_text must be 'report' or 'error', not {self.empty_text!r}")
        if self.max_bad_rows < 0:
            raise ValueError(f"max_bad_rows must be >= 0, not {self.max_bad_rows}")
        for name in ("subsample_train", "subsample_validation", "subsample_test", "held_out_validation",
                     "held_out_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or omitted for all rows), not {value}")


def subsample_size(cfg: DataConfig, spec: TaskSpec, split: str) -> int | None:
    if split == spec.train_split:
        return cfg.subsample_train
    if split in spec.dev_splits:
        return cfg.subsample_validation
    return cfg.subsample_test


def subsample_positions(n: int, size: int | None, seed: int, split: str) -> np.ndarray:
    """Sorted row positions to keep: a seeded draw without replacement, original order kept.

    The split name enters the seed so that equally sized splits do not get the same positions.
    """
    if size is None or size >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    return np.sort(rng.choice(n, size=size, replace=False))


def held_out_sizes(cfg: DataConfig, spec: TaskSpec) -> dict[str, int]:
    """split -> rows it takes from the training file (none unless asked)."""
    asked = {"validation": cfg.held_out_validation, "test": cfg.held_out_test}
    sizes = {}
    for kind, splits in (("validation", spec.dev_splits), ("test", spec.test_splits)):
        if asked[kind] is None:
            continue
        if len(splits) != 1:
            raise ValueError(f"{spec.name}: held_out {kind} needs a task with one {kind} split, it has "
                             f"{len(splits)} ({', '.join(splits)}); give their files instead")
        sizes[splits[0]] = asked[kind]
    return sizes


def hold_out(train: pd.DataFrame, sizes: dict[str, int], seed: int,
             where: str) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Seeded disjoint row sets of `train` (each in file order) for the held-out splits, and the
    rows left to train on; the draw does not depend on the later subsample."""
    need = sum(sizes.values())
    if need >= len(train):
        raise ValueError(f"{where}: held_out asks for {need} rows of a training file of {len(train)} rows; "
                         "leave some to train on (lower data.held_out)")
    order = np.random.default_rng([seed, zlib.crc32(b"held_out")]).permutation(len(train))
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = train.iloc[np.sort(order[start:start + n])].reset_index(drop=True)
        start += n
    return out, train.iloc[np.sort(order[start:])].reset_index(drop=True)


def _frame(spec: TaskSpec, idx, text_a, text_b, label) -> pd.DataFrame:
    """The data artifact's columns with its types: Int64 labels for classification, float64 STS-B."""
    dtype = "float64" if spec.is_regression else "Int64"
    return pd.DataFrame({
        "idx": pd.Series(idx, dtype="int64"),
        "text_a": pd.Series(text_a, dtype="object"),
        "text_b": pd.Series(text_b if spec.is_pair else [None] * len(idx), dtype="object"),
        "label": pd.Series(label, dtype=dtype),
    })


def _read_tsv(cfg: DataConfig, spec: TaskSpec, wanted: list[str]) -> tuple[dict[str, pd.DataFrame], dict, dict]:
    frames, splits, files = {}, {}, {}
    for split in wanted:
        part = glue_tsv.read_split(cfg.glue_dir, spec, split, max_bad_rows=cfg.max_bad_rows)
        if cfg.empty_text == "error" and part.empty_text:
            column, lines = next(iter(part.empty_text.items()))
            raise glue_tsv.GlueFormatError(
                f"{part.path}:{lines[0]}: {column} is empty (data.empty_text is 'error'; "
                "set it to 'report' to keep such rows and count them in the manifest)"
            )
        frames[split] = _frame(spec, part.idx, part.text_a, part.text_b, part.label)
        files[split] = {"path": str(part.path), "sha256": glue_tsv.sha256_file(part.path)}
        splits[split] = {
            "file": str(part.path),
            "rows_read": part.rows_read,
            "rows_valid": len(part.idx),
            "skipped": [{"file": str(part.path), **row} for row in part.skipped],
            "empty_text": {col: {"count": len(lines), "lines": lines[:20]}
                           for col, lines in part.empty_text.items()},
        }
    source = {"kind": "tsv", "glue_dir": str(cfg.glue_dir), "files": files}
    return frames, splits, source


def _read_hub(cfg: DataConfig, spec: TaskSpec, wanted: list[str]) -> tuple[dict[str, pd.DataFrame], dict, dict]:
    import datasets  # heavy import, only for this source

    try:
        ds = datasets.load_dataset(cfg.hub_path, spec.name)
    except Exception as err:  # noqa: BLE001 - network, missing config, ...: one clear message
        raise ValueError(
            f"load_dataset({cfg.hub_path!r}, {spec.name!r}) failed: {type(err).__name__}: {err} "
            "(offline? set data.source: tsv with a glue_data/ folder, or a local data.hub_path)"
        ) from err
    frames, splits = {}, {}
    for split in wanted:
        if split not in ds:
            raise ValueError(
                f"{cfg.hub_path} config {spec.name!r} has no split {split!r} (it has {list(ds)})"
            )
        df = ds[split].to_pandas()
        missing = [c for c in (*spec.text_columns, "label", "idx") if c not in df.columns]
        if missing:
            raise ValueError(f"{cfg.hub_path} {spec.name}/{split}: missing columns {missing}")
        label = df["label"].astype("float64")
        label = label.where(label >= 0)  # the hub marks unlabelled test rows with -1
        if not spec.is_regression:
            bad = label.dropna()
            bad = bad[(bad != bad.round()) | (bad >= spec.num_labels)]
            if len(bad):
                raise ValueError(f"{cfg.hub_path} {spec.name}/{split}: label ids {sorted(set(bad))[:5]} "
                                 f"outside 0..{spec.num_labels - 1}")
            label = label.astype("Int64")
        text_b = df[spec.text_columns[1]].tolist() if spec.is_pair else None
        empty = {}
        for name, col in zip(("text_a", "text_b"), spec.text_columns):
            rows = np.flatnonzero(df[col].fillna("").str.strip() == "").tolist()
            if rows:
                if cfg.empty_text == "error":
                    raise ValueError(f"{cfg.hub_path} {spec.name}/{split} row {rows[0]}: {name} is empty "
                                     "(data.empty_text is 'error')")
                empty[name] = {"count": len(rows), "rows": rows[:20]}
        frames[split] = _frame(spec, df["idx"].tolist(), df[spec.text_columns[0]].tolist(), text_b,
                               label.tolist() if spec.is_regression else label)
        splits[split] = {"rows_read": len(df), "rows_valid": len(df), "skipped": [], "empty_text": empty}
    fingerprints = {s: getattr(ds[s], "_fingerprint", None) for s in wanted}
    source = {"kind": "hub", "hub_path": cfg.hub_path, "fingerprints": fingerprints}
    return frames, splits, source


def _read_user(cfg: DataConfig, spec: TaskSpec, wanted: list[str]) -> tuple[dict[str, pd.DataFrame], dict, dict]:
    src = user_tasks.source(spec.name)
    frames, splits, files = {}, {}, {}
    for split in wanted:
        part = user_tasks.read_split(spec, src, split)
        if cfg.empty_text == "error" and part.empty_text:
            column, where = next(iter(part.empty_text.items()))
            raise user_tasks.UserTaskError(f"{where[0]}: {column} is empty (data.empty_text is 'error'; "
                                           "set it to 'report' to keep such rows and count them)")
        frames[split] = _frame(spec, part.idx, part.text_a, part.text_b, part.label)
        if not src.hub:
            path = src.splits[split]
            files[split] = {"path": path, "sha256": glue_tsv.sha256_file(path),
                            "format": file_format(path)}
        splits[split] = {
            "file": src.splits[split], "rows_read": len(part.idx), "rows_valid": len(part.idx), "skipped": [],
            "empty_text": {col: {"count": len(rows), "rows": rows[:20]} for col, rows in part.empty_text.items()},
        }
        if part.labels_ignored:
            splits[split]["labels_ignored"] = part.labels_ignored
            print(f"{spec.name}/{split}: {part.labels_ignored} labels not used (lnpeft predicts the test "
                  "split; to score labelled rows, make them the dev split)")
    columns = {"text": list(src.text), "label": src.label, "id": src.id}
    source = ({"kind": "hub", "hub_path": src.hub, "hub_config": src.hub_config, "splits": src.splits}
              if src.hub else {"kind": "files", "files": files}) | {"columns": columns}
    return frames, splits, source


def prepare(cfg: DataConfig) -> dict:
    """Read every split of the task, subsample, then write the parquets and the manifest."""
    spec = get_task(cfg.task)
    if spec.user_defined:
        reader = _read_user
    elif cfg.glue_dir is not None:
        reader = _read_tsv
    else:
        reader = _read_hub
    held = held_out_sizes(cfg, spec)
    frames, splits, source = reader(cfg, spec, [s for s in spec.splits if s not in held])
    if held:  # the held-out splits from the training rows, the training split from the rest
        train = spec.train_split
        parts, frames[train] = hold_out(frames[train], held, cfg.seed,
                                        splits[train].get("file", f"{spec.name}/{train}"))
        splits[train]["held_out"] = dict(held)
        for split, df in parts.items():
            frames[split] = df
            splits[split] = {"held_out_from": train, "rows_read": len(df), "rows_valid": len(df),
                             "skipped": [], "empty_text": {}}
        frames = {s: frames[s] for s in spec.splits}  # the task's split order
        splits = {s: splits[s] for s in spec.splits}
    out = Path(cfg.out)
    kept = {}
    for split, df in frames.items():
        size = subsample_size(cfg, spec, split)
        positions = subsample_positions(len(df), size, cfg.seed, split)
        kept[split] = df.iloc[positions].reset_index(drop=True)
        splits[split]["subsample"] = size
        splits[split]["rows_kept"] = len(kept[split])
    for split, df in kept.items():
        write_parquet(df, out / f"{split}.parquet", "data")
    manifest = {
        "task": spec.name,
        "source": source,
        "splits": splits,
        "subsample": {"seed": cfg.seed, "method": "numpy default_rng([seed, crc32(split)]).choice, "
                      "sorted (original order)"},
        "options": asdict(cfg) | {"out": None},  # where it was written is not part of the data
    }
    write_json(manifest, out / "MANIFEST.json")
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True,
                        help="lnpeft task name (cola, sst2, ..., ax, or a custom task of $LNPEFT_TASKS)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--glue-dir", help="a classic glue_data/ folder of TSV files (GLUE tasks)")
    src.add_argument("--hub", action="store_true", help="read with datasets.load_dataset (GLUE tasks)")
    parser.add_argument("--hub-path", default=DEFAULT_HUB_PATH,
                        help="hub dataset id or local dataset folder (with --hub)")
    parser.add_argument("--out", required=True, help="output folder (results/data/{task})")
    parser.add_argument("--max-bad-rows", type=int, default=0,
                        help="malformed TSV rows tolerated per file (skipped, counted)")
    parser.add_argument("--empty-text", choices=["report", "error"], default="report")
    parser.add_argument("--subsample-train", type=int, default=None)
    parser.add_argument("--subsample-validation", type=int, default=None)
    parser.add_argument("--subsample-test", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsampling")
    parser.add_argument("--held-out-validation", type=int, default=None,
                        help="take the dev split from this many training rows (its file is not read)")
    parser.add_argument("--held-out-test", type=int, default=None,
                        help="take the test split from this many training rows, labels kept")


def run(args: argparse.Namespace) -> int:
    spec = get_task(args.task)
    if not spec.user_defined and not args.hub and args.glue_dir is None:
        raise ValueError(f"prepare-data --task {args.task}: give --glue-dir DIR or --hub for a GLUE task")
    if spec.user_defined and (args.hub or args.glue_dir):
        print(f"{args.task}: a custom task reads the files of its definition; --glue-dir/--hub ignored")
    cfg = DataConfig(
        task=args.task, out=args.out, glue_dir=None if args.hub else args.glue_dir,
        hub_path=args.hub_path, max_bad_rows=args.max_bad_rows, empty_text=args.empty_text,
        subsample_train=args.subsample_train, subsample_validation=args.subsample_validation,
        subsample_test=args.subsample_test, seed=args.seed,
        held_out_validation=args.held_out_validation, held_out_test=args.held_out_test,
    )
    manifest = prepare(cfg)
    for split, info in manifest["splits"].items():
        if "held_out_from" in info:
            print(f"{cfg.task}/{split}: {info['rows_kept']} rows held out of {info['held_out_from']}")
            continue
        print(f"{cfg.task}/{split}: read {info['rows_read']}, kept {info['rows_kept']}, "
              f"skipped {len(info['skipped'])}")
    return 0
