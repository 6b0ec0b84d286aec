"""`lnpeft export RUN_DIR --out DIR`: a run's trained state as files other tools load.

- DIR/model/: a plain `save_pretrained` model and tokenizer, the run's init with the trained
  entries of its best epoch applied (`lnpeft.model.state_file.load_state`): every method.
  `AutoModelForSequenceClassification.from_pretrained(DIR/model)` predicts what the run predicted.
- DIR/adapter/ (layernorm and the Fisher subsets): a Hugging Face PEFT LayerNorm-tuning adapter
  (`peft.LNTuningConfig`) for the cached checkpoint the run started from. Its target modules are the
  output LayerNorms; a Fisher subset's untrained entries keep their pretrained values, so the
  adapter holds whole LayerNorms. `modules_to_save` holds the head and every other weight the
  checkpoint lacks and `lnpeft init` seeded (listed in the init's init.json, e.g. a pooler), so
  `PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(CHECKPOINT,
  num_labels=N), DIR/adapter)` is the run's model.
The export checks itself before it finishes: the adapter, loaded back onto the checkpoint, must
hold exactly the merged model's values in every parameter, or nothing is left in DIR.
"""

from __future__ import annotations

import argparse
import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from lnpeft.data.artifacts import atomic_dir, write_json
from lnpeft.data.tasks import get_task
from lnpeft.errors import LnpeftError
from lnpeft.model.architectures import for_config
from lnpeft.model.init import head_config
from lnpeft.model.state_file import load_state

ADAPTER_METHODS = ("layernorm", "fisher")
"""Methods whose trained entries lie in the output LayerNorms and the head only."""


def workflow_root(run: Path) -> Path:
    """The folder holding results/, against which run.json and init.json paths are relative."""
    for parent in run.resolve().parents:
        if parent.name == "results":
            return parent.parent
    return Path.cwd()


def _resolve(path: str, root: Path) -> Path:
    return Path(path) if Path(path).is_absolute() else root / path


def _run_meta(run: Path) -> tuple[dict, dict]:
    """run.json (its init path resolved) and the init's init.json (its checkpoint path resolved)."""
    if not (run / "run.json").is_file():
        raise LnpeftError(f"{run / 'run.json'}: missing; is {run} a finished run of `lnpeft finetune`?")
    meta = json.loads((run / "run.json").read_text())
    if not (run / "state.safetensors").is_file():
        why = ("its run.json says it saved none (training.save_state: false); train it again with "
               "save_state true to export it" if meta["options"].get("save_state", True) is False
               else f"is {run} a finished run of `lnpeft finetune`?")
        raise LnpeftError(f"{run / 'state.safetensors'}: missing; {why}")
    root = workflow_root(run)
    init = _resolve(meta["options"]["init"], root)
    if not (init / "init.json").is_file():
        raise LnpeftError(f"{run}: its init {init} (run.json options.init) has no init.json; "
                          "export needs the workflow's results/init/ beside results/runs/")
    meta["options"]["init"] = str(init)
    init_meta = json.loads((init / "init.json").read_text())
    init_meta["checkpoint"] = str(_resolve(init_meta["checkpoint"], root))
    return meta, init_meta


def merged_model(run: Path, meta: dict):
    """The run's init with its trained entries applied (eval mode, fp32)."""
    from transformers import AutoModelForSequenceClassification


    model = AutoModelForSequenceClassification.from_pretrained(meta["options"]["init"])
    load_state(model, run / "state.safetensors")
    return model.eval()


def _module_of(name: str) -> str:
    return name.rsplit(".", 1)[0]


def adapter_modules(model, init_meta: dict) -> tuple[list[str], list[str]]:
    """(target_modules, modules_to_save): the LayerNorm set's modules, and the head's top-level
    modules plus the modules of every other weight the init seeded (full module paths, which peft
    matches by suffix). Whole head modules, never their children: peft wraps a sequence
    classifier's `classifier` by itself, and a child wrapped inside it (ELECTRA's and RoBERTa's
    `classifier.dense`) would not load back."""
    arch = for_config(model.config)
    names = [n for n, _ in model.named_parameters()]
    targets = list(dict.fromkeys(_module_of(n) for n in names if arch.is_layernorm(n)))
    seeded = set(init_meta.get("new_weights", []))
    to_save = list(dict.fromkeys(n.split(".", 1)[0] if arch.is_head(n) else _module_of(n)
                                 for n in names if arch.is_head(n) or n in seeded))
    return targets, [m for m in to_save if not _under(m, set(to_save))]


def _under(name: str, modules: set[str]) -> bool:
    return any(name.startswith(f"{m}.") for m in modules)


@contextmanager
def _quiet_peft():
    """peft asks every wrapped layer for in/out features, which a LayerNorm has not: it warns, harmlessly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
        yield


def build_adapter(merged, checkpoint: Path, spec, init_meta: dict):
    """A PeftModel over a fresh copy of the checkpoint whose adapter holds the merged values."""
    from peft import LNTuningConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    targets, to_save = adapter_modules(merged, init_meta)
    base = AutoModelForSequenceClassification.from_pretrained(checkpoint, **head_config(spec))
    config = LNTuningConfig(target_modules=targets, modules_to_save=to_save, task_type="SEQ_CLS")
    with _quiet_peft():
        peft_model = get_peft_model(base, config)
    trained = dict(merged.named_parameters())
    copied = set()
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            for marker in (".ln_tuning_layers.default.", ".modules_to_save.default."):
                if marker in name:
                    source = name.removeprefix("base_model.model.").replace(marker, ".")
                    param.copy_(trained[source])
                    copied.add(source)
    expected = {n for n in trained if _under(n, set(targets) | set(to_save))}
    if copied != expected:
        raise LnpeftError(f"peft adapter does not cover {sorted(expected - copied)[:5]} (peft wrapped "
                          f"{sorted(copied - expected)[:5]} instead); report this with your peft version")
    return peft_model


def check_adapter(folder: Path, checkpoint: Path, spec, merged) -> None:
    """Load the saved adapter as a user would and compare every parameter with the merged model."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(checkpoint, **head_config(spec))
    with _quiet_peft():
        loaded = PeftModel.from_pretrained(base, folder).merge_and_unload().eval()
    want = dict(merged.named_parameters())
    # merge_and_unload keeps the modules_to_save wrappers: read their active copy, skip the original
    got = {n.replace(".modules_to_save.default.", "."): p for n, p in loaded.named_parameters()
           if ".original_module." not in n}
    differ = [n for n in want if n not in got or not torch.equal(got[n], want[n])]
    if differ or set(got) != set(want):
        raise LnpeftError(f"{folder}: the adapter loaded on {checkpoint} differs from the run in "
                          f"{len(differ)} tensors (first: {differ[:3]}); nothing was exported")


def export(run: Path, out: Path, adapter: bool | None = None) -> dict:
    """Write out/model (always) and out/adapter (LayerNorm-type methods, unless adapter=False)."""
    from transformers import AutoTokenizer

    meta, init_meta = _run_meta(run)
    method, spec = meta["options"]["method"], get_task(meta["options"]["task"])
    want_adapter = method in ADAPTER_METHODS if adapter is None else adapter
    if want_adapter and method not in ADAPTER_METHODS:
        raise LnpeftError(f"{run}: a {method} run trains more than LayerNorm and the head; a PEFT LN-tuning "
                          "adapter cannot hold it (export the merged model: drop --adapter)")
    checkpoint = Path(init_meta["checkpoint"])
    merged = merged_model(run, meta)
    tokenizer = AutoTokenizer.from_pretrained(meta["options"]["init"])
    written = {}
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        written["model"] = str(out / "model")
        if want_adapter:
            peft_model = build_adapter(merged, checkpoint, spec, init_meta)
            peft_model.save_pretrained(tmp / "adapter")
            tokenizer.save_pretrained(tmp / "adapter")
            check_adapter(tmp / "adapter", checkpoint, spec, merged)
            written["adapter"] = str(out / "adapter")
            written["checkpoint"] = str(checkpoint)
        write_json({"run": str(run), "method": method, "task": spec.name, "num_labels": spec.num_labels,
                    **written}, tmp / "EXPORT.json")
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="a finished run folder (results/runs/{model}/{task}/{method}/lr*_seed*)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (model/, adapter/, EXPORT.json)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--adapter", dest="adapter", action="store_true", default=None,
                       help="require the PEFT adapter (default: for layernorm and Fisher-subset runs)")
    group.add_argument("--no-adapter", dest="adapter", action="store_false", help="the merged model only")


def run(args: argparse.Namespace) -> int:
    written = export(args.run, args.out, args.adapter)
    for kind, path in written.items():
        print(f"export {kind}: {path}")
    return 0
