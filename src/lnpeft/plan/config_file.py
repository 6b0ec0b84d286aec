"""A workflow config as Snakemake sees it: the schema's defaults, then each --configfile in order.

For the commands that read a config outside Snakemake (`lnpeft estimate`, `lnpeft writeup`, the
benchmarks). A custom task of the config becomes known to every task lookup once loaded.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lnpeft.data import user_tasks
from lnpeft.data.textfile import read_utf8

SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"


def schema_defaults(schema: dict) -> dict:
    """The defaults a JSON schema declares, nested like the config."""
    out = {}
    for key, prop in schema.get("properties", {}).items():
        if prop.get("type") == "object" and "properties" in prop:
            out[key] = deep_update(schema_defaults(prop), prop.get("default") or {})
        elif "default" in prop:
            out[key] = prop["default"]
    return out


def deep_update(base: dict, overlay: dict) -> dict:
    """Recursive dict update, as Snakemake merges several --configfile files."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> object:
    """A YAML file (UTF-8, a BOM allowed); a bad byte or bad YAML is one ValueError naming file and line."""
    text = read_utf8(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        position = getattr(err, "position", None)  # a ReaderError (a NUL byte ...) has no mark
        line = mark.line + 1 if mark else text[:position].count("\n") + 1 if position is not None else "?"
        if isinstance(err, yaml.reader.ReaderError):
            char = chr(err.character) if isinstance(err.character, int) else err.character
            problem = f"character {char!r}: {err.reason}"
        else:
            problem = " ".join(str(p) for p in (getattr(err, "context", None), getattr(err, "problem", None)) if p)
        raise ValueError(f"{path}:{line}: not a YAML config ({problem or type(err).__name__})") from None


def load_config(paths: list[Path]) -> dict:
    """Schema defaults, then each config file in order (later files win)."""
    config = schema_defaults(yaml.safe_load(SCHEMA.read_text()))
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config file must be a YAML mapping, got {type(data).__name__}")
        config = deep_update(config, data)
    user_tasks.define(config.get("custom_tasks") or {})  # their names resolve like GLUE's from here on
    return config
