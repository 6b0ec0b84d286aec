"""Config helpers the Snakefile imports: cross-key checks, path resolution, stable formatting.

The JSON schema (workflow/schemas/config.schema.yaml) checks each key alone; what needs two keys
or the file system is checked here, before any job runs, with a message naming the key.
"""

from __future__ import annotations

import os
from pathlib import Path

from lnpeft.tasks import get_task

GLUE_DIR_CANDIDATES = ("glue_data", "../shared/glue")


class ConfigError(ValueError):
    pass


def fmt_lr(value: float) -> str:
    """A number as it appears in paths: 2e-05, 0.0001, 0.1 (repr-stable, no trailing zeros)."""
    return f"{float(value):g}"


def resolve_glue_dir(glue_dir: str | None, base: Path | str = ".") -> str | None:
    """`auto` -> $LNPEFT_GLUE_DIR, ./glue_data or ../shared/glue (the first that exists)."""
    if glue_dir != "auto":
        return glue_dir
    candidates = [os.environ.get("LNPEFT_GLUE_DIR"), *GLUE_DIR_CANDIDATES]
    for candidate in candidates:
        if candidate and (Path(base) / candidate).is_dir():
            return str(candidate)
    return None


def check_config(config: dict) -> None:
    """Checks across keys; raises ConfigError naming the key and the allowed values."""
    for task in config["tasks"]:
        get_task(task)  # the schema enum already limits names; this keeps one source of truth
    data = config.get("data", {})
    if data.get("source") == "tsv":
        resolved = resolve_glue_dir(data.get("glue_dir"))
        if resolved is None:
            raise ConfigError(
                "data.glue_dir: data.source is 'tsv' but no glue_data/ folder was given or found "
                f"(set data.glue_dir to a folder, or 'auto' to search $LNPEFT_GLUE_DIR, "
                f"{', '.join(GLUE_DIR_CANDIDATES)}); or set data.source: hub"
            )
        if not Path(resolved).is_dir():
            raise ConfigError(f"data.glue_dir: {resolved!r} is not a folder")
    model = config["model"]
    if model["source"] == "folder" and not Path(model["location"]).is_dir():
        raise ConfigError(f"model.location: folder {model['location']!r} does not exist (model.source is 'folder')")
    stats = config.get("stats", {})
    for key in ("a", "b"):
        method = stats.get(key)
        if method is not None and method not in config["methods"]:
            raise ConfigError(
                f"stats.{key}: method {method!r} is not in methods {config['methods']}; "
                "add it to methods or choose one of them"
            )
    for method in config.get("submission", {}).get("methods", []):
        if method not in config["methods"]:
            raise ConfigError(
                f"submission.methods: method {method!r} is not in methods {config['methods']}"
            )
