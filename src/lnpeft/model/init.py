"""Stage `init`: the pretrained encoder plus a classification head seeded per (task, seed).

Written once to results/init/{model}/{task}/seed{seed}/ and shared by Fisher, drift and every
fine-tuning run of that task and seed, so all of them start from the same bytes. Every weight the
checkpoint lacks (the classifier head; the pooler too if a checkpoint has none) is re-initialised
from a `torch.Generator` seeded with the seed, in sorted name order, so the result does not depend
on the global RNG or on how transformers initialises missing weights.

With `--dtype bfloat16` (config `model.dtype`) the folder holds every tensor in bf16, half the
bytes (13 GB instead of 27 for a 7B model, per task and seed): the runs of that config load their
init in bf16 anyway (`lnpeft.model.weight_dtype`), so they train from the same values, bit for bit.
The new weights are drawn in fp32 and rounded once, on saving. A float32 run refuses such an init
(`check_init_dtype`): it would train from rounded weights without saying so.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lnpeft.data.artifacts import atomic_dir, write_json
from lnpeft.data.glue_tsv import sha256_file
from lnpeft.data.tasks import TaskSpec, get_task
from lnpeft.model.architectures import LAYERNORM_COMPONENT, LAYERNORM_CONFIG_KEY, check_layernorm_set
from lnpeft.model.checkpoint import CheckpointError, manifest_sha256, verify_checkpoint
from lnpeft.model.methods import select
from lnpeft.model.weight_dtype import WEIGHT_DTYPES, weight_dtype


@dataclass(frozen=True)
class InitConfig:
    checkpoint: str
    """A cached checkpoint folder (results/checkpoints/{model}) with MANIFEST.json."""
    task: str
    """lnpeft task name: sets num_labels, label names and the problem type."""
    seed: int
    """Seed of the new weights (the classification head)."""
    out: str
    """results/init/{model}/{task}/seed{seed}."""
    layernorm: tuple[str, ...] = (LAYERNORM_COMPONENT,)
    """The LayerNorm set (config `model.layernorm`); another than the paper's is recorded in the
    folder's config.json, where every later stage reads it (`lnpeft.model.architectures.for_config`)."""
    dtype: str = "float32"
    """float32 | bfloat16: the dtype the folder's tensors are saved in (config `model.dtype`)."""


def head_config(spec: TaskSpec) -> dict:
    """from_pretrained keyword arguments of a task's head: labels and problem type."""
    if spec.is_regression:
        id2label = {0: "score"}
    else:
        id2label = dict(enumerate(spec.label_names))
    return {
        "num_labels": spec.num_labels,
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
        "problem_type": "regression" if spec.is_regression else "single_label_classification",
    }


def seeded_init_(model: torch.nn.Module, names: list[str], seed: int) -> None:
    """Re-initialise the named parameters as BERT does (normal(0, initializer_range) weights, zero
    biases, norm weights that leave the input unscaled: 1, Gemma's 0) from a generator seeded with
    `seed`, in sorted name order."""
    from lnpeft.model.norms import norm_of

    std = float(getattr(model.config, "initializer_range", 0.02))
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    # by module class (lnpeft.model.norms): ModernBERT's head has a LayerNorm called `norm`
    norms = {f"{m}.weight": norm.unit_weight for m, module in model.named_modules()
             if (norm := norm_of(module)) is not None}
    with torch.no_grad():
        for name in sorted(names):
            p = params[name]
            if name.endswith("bias"):
                p.zero_()
            elif name in norms:
                p.fill_(norms[name])
            elif "LayerNorm" in name or "layer_norm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.normal(0.0, std, size=p.shape, generator=gen, dtype=torch.float32))


def load_seeded(checkpoint: Path | str, spec: TaskSpec, seed: int):
    """AutoModelForSequenceClassification from the checkpoint, new weights seeded; returns
    (model, names of the weights the checkpoint did not provide)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)  # belt and braces: whatever transformers draws is seeded too
    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(checkpoint), output_loading_info=True, dtype=torch.float32, **head_config(spec),
    )
    params = dict(model.named_parameters())
    missing = sorted(k for k in info["missing_keys"] if k in params)
    if info.get("mismatched_keys"):
        raise ValueError(f"{checkpoint}: weights with mismatched shapes: {info['mismatched_keys']}")
    seeded_init_(model, missing, seed)
    model.eval()
    return model, missing


def ensure_pad_token(model: torch.nn.Module, tokenizer, checkpoint: Path | str) -> dict:
    """Batches are padded with the tokenizer's pad token, and a decoder's classification reads the
    last token that is not padding (`Architecture.last_token`), so such a model needs one: a
    tokenizer without one gets its EOS, and config.json's pad_token_id follows the tokenizer.
    Returns what was done, for init.json."""
    from lnpeft.model.architectures import for_config

    added = None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{checkpoint}: the tokenizer has neither a pad nor an EOS token; give it one "
                             "(tokenizer.pad_token = ...; tokenizer.save_pretrained(...)) and cache it again")
        tokenizer.pad_token = added = tokenizer.eos_token
    if for_config(model.config).last_token and model.config.pad_token_id != tokenizer.pad_token_id:
        model.config.pad_token_id = tokenizer.pad_token_id
    return {"pad_token": tokenizer.pad_token, "pad_token_id": tokenizer.pad_token_id, "pad_token_from_eos": bool(added),
            "padding_side": tokenizer.padding_side}


def make_init(cfg: InitConfig) -> dict:
    """Verify the checkpoint, build the seeded model, save model + tokenizer + init.json atomically."""
    from transformers import AutoTokenizer

    spec = get_task(cfg.task)
    verify_checkpoint(cfg.checkpoint)
    model, missing = load_seeded(cfg.checkpoint, spec, cfg.seed)
    layernorm = check_layernorm_set(list(cfg.layernorm), "--layernorm")
    if layernorm != (LAYERNORM_COMPONENT,):  # the paper's set leaves config.json as transformers writes it
        setattr(model.config, LAYERNORM_CONFIG_KEY, list(layernorm))
    select(model, "layernorm")  # a set this family lacks fails here, before any training job
    tokenizer = AutoTokenizer.from_pretrained(cfg.checkpoint)
    padding = ensure_pad_token(model, tokenizer, cfg.checkpoint)
    model.to(weight_dtype(cfg.dtype))
    with atomic_dir(cfg.out) as tmp:  # the folder appears complete or not at all
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "task": spec.name,
            "seed": cfg.seed,
            "checkpoint": str(cfg.checkpoint),
            "checkpoint_manifest_sha256": manifest_sha256(cfg.checkpoint),
            "new_weights": missing,
            "padding": padding,
            "options": asdict(cfg) | {"out": None},
            # what verify_init re-checks before Fisher, drift and fine-tuning load the folder
            "files": {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
                      for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        write_json(info, tmp / "init.json")
    return info


def verify_init(folder: Path | str) -> dict | None:
    """Re-hash the files init.json lists; raise CheckpointError naming a missing or changed one.

    A folder without init.json was not made by `lnpeft init` (a user's own save_pretrained
    folder): nothing to verify against, returns None.
    """
    import json

    folder = Path(folder)
    path = folder / "init.json"
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    for name, entry in info.get("files", {}).items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in {path} but missing; delete {folder} and re-run "
                                  "`lnpeft init` (the workflow's `init` target)")
        if file.stat().st_size != entry["size"] or sha256_file(file) != entry["sha256"]:
            raise CheckpointError(f"{file}: sha256 differs from {path} (corrupted or modified); "
                                  f"delete {folder} and re-run `lnpeft init` (the workflow's `init` target)")
    return info


def init_dtype(info: dict | None) -> str:
    """The dtype an init folder's tensors were saved in (init.json; float32 before the option existed,
    and for a user's own folder)."""
    return (info or {}).get("options", {}).get("dtype", "float32")


def check_init_dtype(folder: Path | str, info: dict | None, run_dtype: str) -> None:
    """A run whose weights are float32 refuses an init saved in bf16: its frozen weights and its start
    would be bf16-rounded values, which its options do not say. A bf16 run takes either init."""
    saved = init_dtype(info)
    if saved != "float32" and run_dtype == "float32":
        raise CheckpointError(f"{folder}: the init was saved in {saved} (lnpeft init --dtype {saved}), but this run "
                              f"holds its weights in float32; run with --dtype {saved}, or rebuild the init with "
                              "--dtype float32 (config: model.dtype)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="cached checkpoint folder")
    parser.add_argument("--task", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True, help="results/init/{model}/{task}/seed{seed}")
    parser.add_argument("--layernorm", nargs="+", default=list(InitConfig.layernorm), metavar="COMPONENT",
                        help="the LayerNorm set: output.LayerNorm (the paper's, default) and/or "
                             "attention.output.LayerNorm")
    parser.add_argument("--dtype", choices=tuple(WEIGHT_DTYPES), default=InitConfig.dtype,
                        help="save every tensor in this dtype (bfloat16: for runs with --dtype bfloat16, half the "
                             "bytes)")


def run(args: argparse.Namespace) -> int:
    info = make_init(InitConfig(args.checkpoint, args.task, args.seed, args.out, tuple(args.layernorm), args.dtype))
    print(f"init {info['task']} seed {info['seed']}: new weights {', '.join(info['new_weights'])}")
    return 0
