"""Fine-tuning runs of (task, method, lr, seed[, mask, fraction]) from an init checkpoint: one run,
or a pack of parameter-efficient runs of one (task, seed) over one frozen model (`lnpeft.packing`).

nanoGPT order, top to bottom: options, seed, load init, select each run's trainable entries, an
optimizer per run over those only, one epoch loop (train, evaluate every dev split, write each
run's row, keep its best epoch's predictions and state, checkpoint for resumption). No trainer or
callback framework; a run alone is a pack of one. What each run keeps and writes in its --out
folder: `lnpeft.run_state`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lnpeft.artifacts import atomic_dir
from lnpeft.batching import Encoded, collate, length_grouped_batches, load_split, model_inputs
from lnpeft.errors import OutOfMemoryError, is_oom
from lnpeft.init import verify_init
from lnpeft.methods import METHODS, MethodOptions, select
from lnpeft.metrics import compute_metrics
from lnpeft.numerics import pin_threads
from lnpeft.packing import batch_rows, in_place, pack, prepare_trainable, replicate, shared_dropout  # noqa: F401
from lnpeft.recipe import RECIPES
from lnpeft.recipe import resolve as resolve_recipe
from lnpeft.run_state import RESUME_FORMAT, RunState, make_optimizer, save_resume, save_safetensors  # noqa: F401
from lnpeft.tasks import get_task


@dataclass(frozen=True)
class FinetuneConfig:
    init: Path
    """save_pretrained folder of the model with its seeded head, plus the tokenizer."""
    train: Path
    """results/data/{task}/train.parquet."""
    dev: tuple[Path, ...]
    """Dev split parquet files; the first one's paper metric picks the best epoch."""
    out: Path
    """Run directory."""
    task: str
    method: str
    lr: float
    seed: int
    test: tuple[Path, ...] = ()
    """Test split parquet files (predicted at the best epoch only)."""
    epochs: int = 20
    batch_size: int = 32
    eval_batch_size: int = 128
    max_length: int = 128
    warmup_ratio: float = 0.0
    """Fraction of optimizer steps with linear warm-up; then linear decay to 0."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay on trained entries only."""
    max_grad_norm: float = 1.0
    """Gradient clipping; 0 turns it off."""
    compile: str = "auto"
    """auto (torch.compile on CUDA only) | true | false."""
    recipe: str = "auto"
    """auto | fp32 | gpu (bf16 autocast, fused AdamW, pinned memory): lnpeft.recipe."""
    mask: Path | None = None
    """Fisher subsets: masks parquet (artifacts "masks")."""
    fraction: float | None = None
    """Fisher subsets: fraction of LayerNorm entries trained."""
    save_model: Path | None = None
    """Also save the final full model here (save_pretrained), for the drift stage."""
    threads: int | None = None
    """torch CPU threads (Snakemake's `threads:`); None: OMP_NUM_THREADS, else torch's default.
    Always pinned (`lnpeft.numerics`): CPU numbers are bit-identical for the same count."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if (self.method == "fisher") != (self.mask is not None and self.fraction is not None):
            raise ValueError("--mask and --fraction go together with --method fisher (and only with it)")
        if self.compile not in ("auto", "true", "false"):
            raise ValueError(f"--compile must be auto, true or false, got {self.compile!r}")
        if self.recipe not in RECIPES:
            raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not self.dev:
            raise ValueError("at least one --dev split is needed to choose the best epoch")

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}


class NonFiniteLossError(FloatingPointError):
    pass


PACK_SHARED = ("init", "train", "dev", "test", "task", "seed", "epochs", "batch_size", "eval_batch_size",
               "max_length", "warmup_ratio", "compile", "recipe", "threads")
"""Options every run of a pack shares: the frozen model, the data, the batch order, the schedule's
length. Method, learning rate, weight decay, clipping, mask and fraction are each run's own."""


def split_name(path: Path) -> str:
    """results/data/mnli/validation_matched.parquet -> validation_matched."""
    return Path(path).name.removesuffix(".parquet")


def run_name(cfg: FinetuneConfig) -> str:
    """sst2/layernorm/lr0.001_seed0; a Fisher subset is named after its mask's folder, which in
    the workflow is its scheme (results/masks/{model}/{scheme}/{task}.parquet): fisher-global-f0.1."""
    method = cfg.method
    if cfg.mask is not None and cfg.fraction is not None:
        method = f"{cfg.method}-{Path(cfg.mask).parent.name}-f{cfg.fraction:g}"
    return f"{cfg.task}/{method}/lr{cfg.lr:g}_seed{cfg.seed}"


def check_pack(cfgs: Sequence[FinetuneConfig]) -> None:
    """Raise ValueError naming the first option two runs of one pack do not share."""
    if not cfgs:
        raise ValueError("a pack needs at least one run")
    if len(cfgs) > 1:
        for cfg in cfgs:
            if cfg.method == "full" or cfg.save_model is not None:
                raise ValueError(f"{run_name(cfg)}: full fine-tuning (and --save-model) trains one run "
                                 "per job; pack only parameter-efficient runs")
        for name in PACK_SHARED:
            values = {str(getattr(c, name)) for c in cfgs}
            if len(values) > 1:
                raise ValueError(f"runs of one pack must share {name}; got {sorted(values)}")
    outs = [Path(c.out).resolve() for c in cfgs]
    if len(set(outs)) < len(outs):
        raise ValueError("two runs of one pack write the same --out folder")


# ---------------------------------------------------------------- helpers


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    # fp32 loss whatever the autocast dtype, so bf16 logits do not round the loss
    logits = logits.float()
    if regression:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels.long())


@torch.no_grad()
def predict(model, data: Encoded, batch_size: int, device: torch.device, regression: bool,
            amp: bool, copies: int = 1) -> np.ndarray:
    """Label ids (float) or regression scores for every example, in the split's row order; for a
    packed model (`copies` members), one row per member."""
    model.eval()
    out = np.empty((copies, len(data)), dtype=np.float64)
    for idx in length_grouped_batches(data.lengths, batch_size, seed=None):
        batch = replicate(collate(data, idx), copies)
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp), batch_rows(copies * len(idx)):
                logits = model(**model_inputs(model, batch, device)).logits.float()
        except RuntimeError as err:
            if not is_oom(err):
                raise
            knobs = (f"training.eval_batch_size (--eval-batch-size, now {batch_size}) or training.max_length "
                     "(--max-length)")
            raise OutOfMemoryError(
                f"out of memory while predicting a batch of {len(idx)} examples x "
                f"{batch['input_ids'].shape[1]} tokens" + (f" for each of {copies} runs" if copies > 1 else "")
                + f" on {device}; lower " + (f"training.pack_size, {knobs}" if copies > 1 else knobs)
            ) from err
        logits = logits.reshape(copies, len(idx), -1)
        out[:, idx] = (logits[..., 0] if regression else logits.argmax(-1)).cpu().numpy()
    return out[0] if copies == 1 else out


def _check_losses(losses: torch.Tensor, checked: int, step: int, run: str, epoch: int) -> int:
    """Read the losses of steps checked+1..step (one device sync) and fail on the first non-finite
    one, naming its step; returns the new count of checked steps."""
    values = losses[checked:step].cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        first = int(bad[0])
        raise NonFiniteLossError(f"{run}: loss is {float(values[first])} at epoch {epoch}, step "
                                 f"{checked + first + 1}; lower --lr or check the data")
    return step


def load_state(model, path: Path | str) -> None:
    """Apply a state.safetensors (whole tensors and `@indices`/`@values` pairs) to a model in place."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for key, value in state.items():
            if key.endswith("@values"):
                continue
            if key.endswith("@indices"):
                name = key.removesuffix("@indices")
                params[name].view(-1)[value.to(params[name].device)] = state[f"{name}@values"].to(params[name])
            elif key in params:
                params[key].copy_(value)
            else:
                raise KeyError(f"{path}: tensor {key!r} is not in the model")


def _dropout_mode(mode: str, device: torch.device) -> str:
    if mode not in ("auto", "shared", "independent"):
        raise ValueError(f"--pack-dropout must be auto, shared or independent, got {mode!r}")
    return ("shared" if device.type == "cpu" else "independent") if mode == "auto" else mode


# ---------------------------------------------------------------- the loop


def finetune(cfg: FinetuneConfig) -> pd.DataFrame:
    """One run: a pack of one. Raises what made it fail (NonFiniteLossError, OutOfMemoryError)."""
    (run,) = finetune_pack([cfg])
    if run.error is not None:
        raise run.error
    return pd.DataFrame(run.rows)


def finetune_pack(cfgs: Sequence[FinetuneConfig], dropout: str = "auto") -> list[RunState]:
    """Train the runs `cfgs` (one, or a pack sharing `PACK_SHARED`) in one loop over one frozen model.

    Each run writes its own folder (`lnpeft.run_state`). A member of a pack whose loss turns
    non-finite is marked failed (`RunState.error`, failed.json) and the others finish; a run alone
    raises. `dropout` (packs only): shared | independent | auto (shared on CPU; `lnpeft.packing`).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    check_pack(cfgs)
    cfg0, copies = cfgs[0], len(cfgs)
    spec = get_task(cfg0.task)
    regression = spec.is_regression
    verify_init(cfg0.init)  # a corrupted or changed init fails here, before any training
    threads = pin_threads(cfg0.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    recipe = resolve_recipe(cfg0.recipe, device)  # auto: bf16 autocast, fused AdamW on GPU; exact fp32 on CPU
    amp = recipe.bf16
    dropout = _dropout_mode(dropout, device)
    label = (f"run {run_name(cfg0)} ({cfg0.out})" if copies == 1
             else f"pack of {copies} runs of {cfg0.task} seed {cfg0.seed} ({', '.join(str(c.out) for c in cfgs)})")

    # seed, then load the init (its head was seeded once per (task, seed) by `lnpeft init`)
    _seed_everything(cfg0.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg0.init)
    model = AutoModelForSequenceClassification.from_pretrained(cfg0.init)
    if model.config.num_labels != spec.num_labels:
        raise ValueError(f"{cfg0.init}: model has {model.config.num_labels} labels, task {cfg0.task} "
                         f"needs {spec.num_labels}; rebuild the init for this task")
    model.to(device)

    train = load_split(cfg0.train, tokenizer, cfg0.max_length)
    if np.isnan(train.labels).any():
        raise ValueError(f"{cfg0.train}: training split has unlabelled rows")
    devs = {split_name(p): load_split(p, tokenizer, cfg0.max_length) for p in cfg0.dev}
    tests = {split_name(p): load_split(p, tokenizer, cfg0.max_length) for p in cfg0.test}
    first_dev = split_name(cfg0.dev[0])

    # select each run's trainable entries; a run alone trains the model's own tensors (every other
    # tensor frozen, no weight gradients), a pack gives each member tensors of its own
    trainables = [select(model, c.method, MethodOptions(c.seed, c.fraction, c.mask)) for c in cfgs]
    params = [in_place(model, trainables[0])] if copies == 1 else pack(model, trainables)
    n_total = sum(p.numel() for p in model.parameters())
    steps_per_epoch = math.ceil(len(train) / cfg0.batch_size)
    runs = []
    for cfg, trainable, p in zip(cfgs, trainables, params):
        full_state = ((lambda: {n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()})
                      if cfg.method == "full" else None)
        runs.append(RunState(cfg, run_name(cfg), trainable, p, full_state, steps_per_epoch * cfg.epochs, device,
                             fused=recipe.fused_adamw))
    sync_every = 1 if device.type == "cpu" else 50  # loss reads stall a GPU, not a CPU
    fwd = model
    if cfg0.compile == "true" or (cfg0.compile == "auto" and device.type == "cuda"):
        fwd = torch.compile(model, dynamic=True)

    # resume each run from its last completed epoch if a checkpoint of that very run exists; the
    # pack starts at the earliest such epoch, and runs further along join at theirs
    for run in runs:
        run.resume()
    start_epoch = min(run.start_epoch for run in runs)
    for run in runs:
        n_trainable = run.trainable.count(model)
        print(f"{run.name}: {n_trainable:,} of {n_total:,} parameters trainable "
              f"({100 * n_trainable / n_total:.4f}%), {len(train)} training examples, device {device}"
              + (f", in a pack of {copies}" if copies > 1 else ""), flush=True)
    packed_dropout = (lambda: shared_dropout(copies)) if dropout == "shared" else contextlib.nullcontext

    for epoch in range(start_epoch, cfg0.epochs + 1):
        joining = next((r for r in runs if r.start_epoch == epoch and r.rng is not None), None)
        if joining is not None:  # the generators as they were after its last epoch (dropout's masks)
            torch.set_rng_state(joining.rng["cpu"])
            if device.type == "cuda" and joining.rng["cuda"] is not None:
                torch.cuda.set_rng_state(joining.rng["cuda"])
        active = [r.active(epoch) for r in runs]
        if not any(active):  # every run failed, or those left join later
            continue
        # ---- train
        model.train()
        t0 = time.perf_counter()
        tokens, padded = 0, 0
        # data order depends on (seed, epoch) only, so a resumed run sees the same batches
        batches = length_grouped_batches(train.lengths, cfg0.batch_size, seed=cfg0.seed * 100_003 + epoch)
        sizes = np.array([len(b) for b in batches], dtype=np.float64)
        # per-step losses stay on the device: reading one (.item()) would stall the GPU every step
        losses = torch.zeros(copies, len(batches), device=device)
        checked = 0  # steps whose losses were read
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg0.epochs}", unit="batch", mininterval=5)
        for step, idx in enumerate(bar, start=1):
            batch = collate(train, idx)
            tokens += int(batch["attention_mask"].sum())  # counted on the CPU copy: no device sync
            padded += batch["input_ids"].numel()
            batch = {k: (v.pin_memory() if recipe.pin_memory else v).to(device, non_blocking=True)
                     for k, v in replicate(batch, copies).items()}
            try:
                with (torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp), packed_dropout(),
                      batch_rows(copies * len(idx))):
                    logits = fwd(**model_inputs(model, batch)).logits
                logits = logits.reshape(copies, len(idx), -1)  # member g: rows g*B..(g+1)*B
                member_losses = torch.stack([_loss(logits[g], batch["labels"], regression)
                                             for g in range(copies)])
                losses[:, step - 1] = member_losses.detach()
                member_losses.sum().backward()  # each member's tensors get its own loss's gradient
                for run, on in zip(runs, active):
                    run.step() if on else run.skip_step()
            except RuntimeError as err:
                if not is_oom(err):
                    raise
                knobs = (f"training.batch_size (--batch-size, now {cfg0.batch_size}) or training.max_length "
                         f"(--max-length, now {cfg0.max_length})")
                if copies > 1:
                    knobs = f"training.pack_size, {knobs}"
                raise OutOfMemoryError(
                    f"{label}: out of memory at epoch {epoch}, step {step} (a batch of {len(idx)} examples x "
                    f"{batch['input_ids'].shape[1]} tokens" + (f" for each of {copies} runs" if copies > 1 else "")
                    + f" on {device}); lower {knobs}"
                ) from err
            if step % sync_every == 0 or step == len(batches):
                for g, run in enumerate(runs):
                    if active[g]:
                        try:
                            _check_losses(losses[g], checked, step, f"run {run.name} ({run.out})", epoch)
                        except NonFiniteLossError as err:
                            if copies == 1:
                                raise
                            run.fail(err)
                            active[g] = False
                checked = step
                if not any(active):  # the rest of this epoch trains nobody
                    break
                first = active.index(True)
                bar.set_postfix(loss=f"{float(losses[first, :step].mean()):.4f}",
                                ex_s=f"{sizes[:step].sum() * copies / (time.perf_counter() - t0):.1f}",
                                refresh=False)
        if not any(active):
            continue
        seconds = time.perf_counter() - t0
        seen = int(sizes.sum())
        loss_sums = (losses.cpu().double().numpy() * sizes).sum(1)

        # ---- evaluate every dev split, for every member at once
        dev_preds = {s: predict(model, d, cfg0.eval_batch_size, device, regression, amp, copies).reshape(copies, -1)
                     for s, d in devs.items()}
        test_preds: dict[str, np.ndarray] = {}

        def best_predictions(g: int) -> pd.DataFrame:
            """Member g's dev predictions, and its test predictions: made for every member at once,
            the first time a member has a new best epoch in this epoch."""
            if not test_preds:
                test_preds.update({s: predict(model, d, cfg0.eval_batch_size, device, regression, amp,
                                              copies).reshape(copies, -1) for s, d in tests.items()})
            frames = [pd.DataFrame({"split": s, "idx": devs[s].idx, "prediction": p[g]})
                      for s, p in dev_preds.items()]
            frames += [pd.DataFrame({"split": s, "idx": d.idx, "prediction": test_preds[s][g]})
                       for s, d in tests.items()]
            return pd.concat(frames, ignore_index=True)

        for g, run in enumerate(runs):
            if not active[g]:
                continue
            row = {"epoch": epoch, "train_loss": float(loss_sums[g]) / seen, "seconds": seconds, "tokens": tokens,
                   "padded_tokens": padded, "trainable": run.trainable.count(model), "lr": run.cfg.lr}
            for split, data in devs.items():
                for metric, value in compute_metrics(spec, data.labels, dev_preds[split][g]).items():
                    row[f"{split}/{metric}"] = value
            score = row[f"{first_dev}/{spec.metric}"]
            print(f"{run.name}: epoch {epoch} train_loss {row['train_loss']:.4f} "
                  f"{first_dev}/{spec.metric} {score:.4f} ({seen * copies / seconds:.1f} ex/s"
                  + (f" for the pack of {copies}" if copies > 1 else "") + ")", flush=True)
            run.end_epoch(row, score, lambda g=g: best_predictions(g))
        # ---- checkpoint: a killed run restarts after the last completed epoch
        for g, run in enumerate(runs):
            if active[g]:
                run.checkpoint(epoch, device)

    if cfg0.save_model is not None:  # a run alone (check_pack): the model holds its trained tensors
        with atomic_dir(cfg0.save_model) as tmp:  # complete or absent, as every other output
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    for run in runs:
        if run.error is None:
            run.finish({"total": n_total, "trainable": run.trainable.count(model),
                        "metric": f"{first_dev}/{spec.metric}", "device": str(device), "threads": threads,
                        "torch": torch.__version__, **({"pack": copies} if copies > 1 else {})})
    return runs


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser, member: bool = False) -> None:
    """`lnpeft finetune`'s flags; `member`: without the per-run ones (`lnpeft finetune-pack --member`)."""
    d = FinetuneConfig.__dataclass_fields__
    parser.add_argument("--init", required=True, type=Path, help="init folder (save_pretrained + tokenizer)")
    parser.add_argument("--train", required=True, type=Path)
    parser.add_argument("--dev", required=True, type=Path, action="append",
                        help="dev split parquet (repeat; the first picks the best epoch)")
    parser.add_argument("--test", type=Path, action="append", default=[], help="test split parquet (repeat)")
    parser.add_argument("--task", required=True)
    if not member:
        parser.add_argument("--method", required=True, choices=sorted(METHODS))
        parser.add_argument("--lr", required=True, type=float)
    parser.add_argument("--seed", required=True, type=int)
    if not member:
        parser.add_argument("--out", required=True, type=Path, help="run directory")
    for name in ("epochs", "batch_size", "eval_batch_size", "max_length", "threads"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=d[name].default)
    for name in ("warmup_ratio", "weight_decay", "max_grad_norm") + (() if member else ("fraction",)):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=d[name].default)
    parser.add_argument("--compile", choices=("auto", "true", "false"), default="auto")
    parser.add_argument("--recipe", choices=RECIPES, default="auto",
                        help="gpu: bf16 autocast and fused AdamW (also on CPU); fp32; auto: gpu on CUDA, else fp32")
    if not member:
        parser.add_argument("--mask", type=Path, help="fisher: masks parquet")
        parser.add_argument("--save-model", type=Path, help="save the final model here (drift)")


def run(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in fields}
    kwargs["dev"], kwargs["test"] = tuple(args.dev), tuple(args.test)
    finetune(FinetuneConfig(**kwargs))
    return 0
