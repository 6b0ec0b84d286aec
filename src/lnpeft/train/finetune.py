"""Fine-tuning runs of (task, method, lr, seed[, mask, fraction]) from an init checkpoint: one run,
or a pack of parameter-efficient runs of one (task, seed) over one frozen model (`lnpeft.train.packing`).

nanoGPT order, top to bottom: options, seed, load init, select each run's trainable entries, an
optimizer per run over those only, one epoch loop (train, evaluate every dev split, write each
run's row, keep its best epoch's predictions and state, checkpoint for resumption). No trainer or
callback framework; a run alone is a pack of one. What each run keeps and writes in its --out
folder: `lnpeft.train.run_state`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
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

from lnpeft.data.artifacts import atomic_dir, write_json
from lnpeft.data.batching import Encoded, collate, length_grouped_batches, load_split, model_inputs
from lnpeft.data.metrics import compute_metrics
from lnpeft.data.tasks import get_task
from lnpeft.errors import NonFiniteOutputError, OutOfMemoryError, RecordedFailure, is_oom
from lnpeft.model.init import check_init_dtype, verify_init
from lnpeft.model.methods import METHODS, MethodOptions, select
from lnpeft.model.provenance import check_inputs
from lnpeft.model.weight_dtype import WEIGHT_DTYPES, check_autocast, check_method, hold, parameter_bytes, weight_dtype
from lnpeft.numerics import pin_threads
from lnpeft.train.compile_cache import cache_report
from lnpeft.train.machine import describe as describe_machine
from lnpeft.train.packing import batch_rows, in_place, pack, prepare_trainable, replicate, shared_dropout  # noqa: F401
from lnpeft.train.recipe import RECIPES, Recipe
from lnpeft.train.recipe import resolve as resolve_recipe
from lnpeft.train.run_state import RESUME_FORMAT, RunState, make_optimizer, save_resume  # noqa: F401


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
    """auto | fp32 | bf16 (where native) | gpu (bf16 autocast, fused AdamW, pinned memory): lnpeft.train.recipe."""
    dtype: str = "float32"
    """float32 | bfloat16: the dtype the frozen weights are held in; trained tensors stay fp32
    (lnpeft.model.weight_dtype: bfloat16 needs bf16 autocast and refuses full fine-tuning)."""
    mask: Path | None = None
    """Fisher subsets: masks parquet (artifacts "masks")."""
    fraction: float | None = None
    """Fisher subsets: fraction of LayerNorm entries trained."""
    save_model: Path | None = None
    """Also save the final full model here (save_pretrained), for the drift stage."""
    save_state: bool = True
    """Write state.safetensors (the best epoch's trained entries). False: a grid that keeps only
    metrics and predictions (a full fine-tune's state is the whole model)."""
    threads: int | None = None
    """torch CPU threads (Snakemake's `threads:`); None: OMP_NUM_THREADS, else torch's default.
    Always pinned (`lnpeft.numerics`): CPU numbers are bit-identical for the same count."""
    attempt: int = 1
    """Snakemake's attempt of this job: a retry (> 1) of a run alone whose last attempt failed
    deterministically (failed.json) fails at once, instead of training to the same failure."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if (self.method == "fisher") != (self.mask is not None and self.fraction is not None):
            raise ValueError("--mask and --fraction go together with --method fisher (and only with it)")
        if self.compile not in ("auto", "true", "false"):
            raise ValueError(f"--compile must be auto, true or false, got {self.compile!r}")
        if self.recipe not in RECIPES:
            raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        check_method(self.dtype, self.method)
        for name in ("epochs", "batch_size", "eval_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not self.dev:
            raise ValueError("at least one --dev split is needed to choose the best epoch")

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}


class NonFiniteLossError(FloatingPointError):
    deterministic = True  # the same data, seed and lr diverge again


PACK_SHARED = ("init", "train", "dev", "test", "task", "seed", "epochs", "batch_size", "eval_batch_size",
               "max_length", "warmup_ratio", "compile", "recipe", "dtype", "threads", "attempt", "save_state")
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


def _dropout_mode(mode: str, device: torch.device) -> str:
    if mode not in ("auto", "shared", "independent"):
        raise ValueError(f"--pack-dropout must be auto, shared or independent, got {mode!r}")
    return ("shared" if device.type == "cpu" else "independent") if mode == "auto" else mode


# ---------------------------------------------------------------- set-up, beside the loop


def choose_device(cfg: FinetuneConfig) -> tuple[torch.device, Recipe, int]:
    """CUDA if there is one, else the CPU; the recipe resolved there (auto: bf16 autocast and fused
    AdamW on a GPU, exact fp32 on a CPU); the CPU threads, pinned (`lnpeft.numerics`)."""
    threads = pin_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device, resolve_recipe(cfg.recipe, device), threads


def load_init(cfg: FinetuneConfig, num_labels: int, device: torch.device):
    """The init's tokenizer and model (its head was seeded once per (task, seed) by `lnpeft init`),
    every tensor in `cfg.dtype` (`make_runs` puts the trained ones back in fp32)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.init)
    model = AutoModelForSequenceClassification.from_pretrained(cfg.init, dtype=weight_dtype(cfg.dtype))
    if model.config.num_labels != num_labels:
        raise ValueError(f"{cfg.init}: model has {model.config.num_labels} labels, task {cfg.task} "
                         f"needs {num_labels}; rebuild the init for this task")
    return tokenizer, model.to(device)


def load_splits(cfg: FinetuneConfig, tokenizer) -> tuple[Encoded, dict[str, Encoded], dict[str, Encoded]]:
    """Train, dev and test splits, tokenised once."""
    train = load_split(cfg.train, tokenizer, cfg.max_length)
    if np.isnan(train.labels).any():
        raise ValueError(f"{cfg.train}: training split has unlabelled rows")
    devs = {split_name(p): load_split(p, tokenizer, cfg.max_length) for p in cfg.dev}
    tests = {split_name(p): load_split(p, tokenizer, cfg.max_length) for p in cfg.test}
    return train, devs, tests


def make_runs(model, cfgs: Sequence[FinetuneConfig], steps: int, device: torch.device,
              recipe: Recipe) -> list[RunState]:
    """Each run's trainable entries, tensors and optimizer. A run alone trains the model's own
    tensors (every other tensor frozen, no weight gradients); a pack gives each member its own."""
    trainables = [select(model, c.method, MethodOptions(c.seed, c.fraction, c.mask)) for c in cfgs]
    # frozen weights stay in --dtype; what any run trains whole, and the norms, in fp32 (a pack's
    # members copy their tensors from these)
    hold(model, {n for t in trainables for n in t.whole}, cfgs[0].dtype)
    params = [in_place(model, trainables[0])] if len(cfgs) == 1 else pack(model, trainables)
    runs = []
    for cfg, trainable, p in zip(cfgs, trainables, params):
        full_state = ((lambda: {n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()})
                      if cfg.method == "full" else None)
        runs.append(RunState(cfg, run_name(cfg), trainable, p, full_state, steps, device,
                             fused=recipe.fused_adamw, recipe=recipe.name))
    return runs


def _batch_text(idx, width: int, copies: int, device: torch.device) -> str:
    """`a batch of 32 examples x 48 tokens[ for each of 4 runs] on cuda`, for out-of-memory messages."""
    return (f"a batch of {len(idx)} examples x {width} tokens" + (f" for each of {copies} runs" if copies > 1 else "")
            + f" on {device}")


def _knobs(copies: int, knobs: str) -> str:
    """What to lower: the pack size first when the batch is a pack's."""
    return f"training.pack_size, {knobs}" if copies > 1 else knobs


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
            raise OutOfMemoryError(f"out of memory while predicting {_batch_text(idx, batch['input_ids'].shape[1], copies, device)}"
                                   f"; lower {_knobs(copies, knobs)}") from err
        logits = logits.reshape(copies, len(idx), -1)
        pred = (logits[..., 0] if regression else logits.argmax(-1).to(logits.dtype))
        # argmax over NaN logits names a class; keep NaN so the metric (or the check) sees it
        pred = torch.where(torch.isfinite(logits).all(-1), pred, torch.full_like(pred, float("nan")))
        out[:, idx] = pred.cpu().numpy()
    return out[0] if copies == 1 else out


def check_finite(run: RunState, preds: dict[str, np.ndarray], epoch: int | None = None) -> None:
    """Fail a run whose predictions hold NaN (its model's outputs were not finite), naming it."""
    for split, values in preds.items():
        bad = ~np.isfinite(values)
        if bad.any():
            when = f" at epoch {epoch}" if epoch is not None else " from its best epoch's state"
            raise NonFiniteOutputError(f"run {run.name} ({run.out}): {int(bad.sum())} of {bad.size} {split} "
                                       f"predictions are NaN{when} (the model's outputs are not finite); lower "
                                       "--lr or check the data")


def predictions_frame(splits: dict[str, Encoded], preds: dict[str, np.ndarray]) -> pd.DataFrame:
    """One run's predictions.parquet rows: split, idx, prediction."""
    return pd.concat([pd.DataFrame({"split": s, "idx": d.idx, "prediction": preds[s]}) for s, d in splits.items()],
                     ignore_index=True)


def epoch_row(run: RunState, spec, epoch: int, loss: float, devs: dict[str, Encoded],
              dev_preds: dict[str, np.ndarray], counts: dict) -> dict:
    """One run's epochs.parquet row: train loss, every dev metric, and the epoch's counts."""
    row = {"epoch": epoch, "train_loss": loss, **counts, "lr": run.cfg.lr}
    for split, data in devs.items():
        for metric, value in compute_metrics(spec, data.labels, dev_preds[split]).items():
            row[f"{split}/{metric}"] = value
    return row


# ---------------------------------------------------------------- the loop


def finetune(cfg: FinetuneConfig) -> pd.DataFrame:
    """One run: a pack of one. Raises what made it fail (NonFiniteLossError, OutOfMemoryError).

    A deterministic failure is recorded in the run's failed.json; a retry of the job (`attempt` >
    1: Snakemake resubmits failed jobs at twice and three times the time) with the same options
    fails at once with that message rather than train again to the same end."""
    recorded = _recorded_failure(cfg)
    if recorded is not None and cfg.attempt > 1:
        raise RecordedFailure(f"{recorded} (recorded in {Path(cfg.out) / 'failed.json'} by attempt "
                              f"{cfg.attempt - 1}: the same inputs fail the same way; fix the cause and run again)")
    try:
        (run,) = finetune_pack([cfg])
    except (NonFiniteLossError, NonFiniteOutputError, OutOfMemoryError) as err:  # failures after training began
        _record_failure(cfg, err)
        raise
    if run.error is not None:
        raise run.error
    return pd.DataFrame(run.rows)


def _fingerprint(cfg: FinetuneConfig) -> dict:
    return {k: v for k, v in cfg.to_json().items() if k not in ("threads", "attempt")}


def _record_failure(cfg: FinetuneConfig, err: BaseException) -> None:
    write_json({"run": run_name(cfg), "error": type(err).__name__, "message": str(err), "deterministic": True,
                "options": _fingerprint(cfg)}, Path(cfg.out) / "failed.json")


def _recorded_failure(cfg: FinetuneConfig) -> str | None:
    """The message of a deterministic failure this very run (same options) recorded, if any."""
    path = Path(cfg.out) / "failed.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    same = record.get("deterministic") and record.get("options") == _fingerprint(cfg)
    return record.get("message") if same else None


def finetune_pack(cfgs: Sequence[FinetuneConfig], dropout: str = "auto",
                  halved_from: tuple[int, ...] = ()) -> list[RunState]:
    """Train the runs `cfgs` (one, or a pack sharing `PACK_SHARED`) in one loop over one frozen model.

    Each run writes its own folder (`lnpeft.train.run_state`). A member of a pack whose loss turns
    non-finite is marked failed (`RunState.error`, failed.json) and the others finish; a run alone
    raises. `dropout` (packs only): shared | independent | auto (shared on CPU; `lnpeft.train.packing`).

    A pack that runs out of memory is halved in this process: each half trains after the other,
    its members resuming from their last epoch checkpoints, as after a kill (run.json records the
    pack sizes it came from, `pack_halved_from`). A run alone that runs out of memory raises.
    """
    try:
        return _train(cfgs, dropout, halved_from)
    except OutOfMemoryError as err:
        if len(cfgs) == 1:
            raise
        reason = str(err)
    # out of the except block: the error's traceback (and with it the pack's model) is gone
    _release_memory()
    half = (len(cfgs) + 1) // 2
    print(f"out of memory with {len(cfgs)} runs in one pack ({reason}); halving it: {half} runs, then "
          f"{len(cfgs) - half}, each resuming from its last epoch checkpoint", flush=True)
    history = (*halved_from, len(cfgs))
    return finetune_pack(cfgs[:half], dropout, history) + finetune_pack(cfgs[half:], dropout, history)


def _release_memory() -> None:
    """Drop what the failed pack held (its model, activations) before the halves load theirs."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _train(cfgs: Sequence[FinetuneConfig], dropout: str, halved_from: tuple[int, ...]) -> list[RunState]:
    """The loop of `finetune_pack`, for one pack size."""
    check_pack(cfgs)
    cfg0, copies = cfgs[0], len(cfgs)
    alone = copies == 1 and not halved_from  # a run alone raises its failure; a pack's member fails alone
    spec = get_task(cfg0.task)
    # a corrupted or changed init, or one saved in bf16 for a float32 run, fails here, before any training
    check_init_dtype(cfg0.init, verify_init(cfg0.init), cfg0.dtype)
    # an init or split made for another task or seed (a stage run by hand) fails here too
    check_inputs(cfg0.init, [cfg0.train, *cfg0.dev, *cfg0.test], task=cfg0.task, seed=cfg0.seed)
    device, recipe, threads = choose_device(cfg0)
    amp = recipe.bf16
    check_autocast(cfg0.dtype, amp, recipe.name)  # bf16 weights meet fp32 tensors only inside autocast
    dropout = _dropout_mode(dropout, device)
    label = (f"run {run_name(cfg0)} ({cfg0.out})" if copies == 1
             else f"pack of {copies} runs of {cfg0.task} seed {cfg0.seed} ({', '.join(str(c.out) for c in cfgs)})")

    _seed_everything(cfg0.seed)
    tokenizer, model = load_init(cfg0, spec.num_labels, device)
    train, devs, tests = load_splits(cfg0, tokenizer)
    first_dev = split_name(cfg0.dev[0])
    steps_per_epoch = math.ceil(len(train) / cfg0.batch_size)
    runs = make_runs(model, cfgs, steps_per_epoch * cfg0.epochs, device, recipe)
    n_total = sum(p.numel() for p in model.parameters())
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
                member_losses = torch.stack([_loss(logits[g], batch["labels"], regression=spec.is_regression)
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
                raise OutOfMemoryError(
                    f"{label}: out of memory at epoch {epoch}, step {step} "
                    f"({_batch_text(idx, batch['input_ids'].shape[1], copies, device)}); lower {_knobs(copies, knobs)}"
                ) from err
            if step % sync_every == 0 or step == len(batches):
                for g, run in enumerate(runs):
                    if active[g]:
                        try:
                            _check_losses(losses[g], checked, step, f"run {run.name} ({run.out})", epoch)
                        except NonFiniteLossError as err:
                            if alone:
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

        # ---- evaluate every dev split, for every member at once; each run writes its row
        dev_preds = {s: predict(model, d, cfg0.eval_batch_size, device, spec.is_regression, amp, copies)
                     .reshape(copies, -1) for s, d in devs.items()}
        counts = {"seconds": seconds, "tokens": tokens, "padded_tokens": padded}
        for g, run in enumerate(runs):
            if not active[g]:
                continue
            preds = {s: p[g] for s, p in dev_preds.items()}
            try:
                check_finite(run, preds, epoch)
            except NonFiniteOutputError as err:
                if alone:
                    raise
                run.fail(err)
                active[g] = False
                continue
            row = epoch_row(run, spec, epoch, float(loss_sums[g]) / seen, devs, preds,
                            {**counts, "trainable": run.trainable.count(model)})
            score = row[f"{first_dev}/{spec.metric}"]
            print(f"{run.name}: epoch {epoch} train_loss {row['train_loss']:.4f} "
                  f"{first_dev}/{spec.metric} {score:.4f} ({seen * copies / seconds:.1f} ex/s"
                  + (f" for the pack of {copies}" if copies > 1 else "") + ")", flush=True)
            run.end_epoch(row, score, predictions_frame(devs, preds))
        # ---- checkpoint: a killed run restarts after the last completed epoch
        for g, run in enumerate(runs):
            if active[g]:
                run.checkpoint(epoch, device)

    if cfg0.save_model is not None:  # a run alone (check_pack): the model holds its final tensors
        with atomic_dir(cfg0.save_model) as tmp:  # complete or absent, as every other output
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    # ---- test predictions once, from each run's best epoch (all members in one pass)
    done = [run for run in runs if run.error is None]
    test_preds: dict[str, np.ndarray] = {}
    if tests and done:
        for run in done:
            run.restore_best()
        test_preds = {s: predict(model, d, cfg0.eval_batch_size, device, spec.is_regression, amp, copies)
                      .reshape(copies, -1) for s, d in tests.items()}
    machine = describe_machine(device)  # one process, one machine: the same for every member
    for g, run in enumerate(runs):
        if run.error is None and tests:
            try:
                check_finite(run, {s: p[g] for s, p in test_preds.items()})
            except NonFiniteOutputError as err:
                if alone:
                    raise
                run.fail(err)
        if run.error is None:
            tested = predictions_frame(tests, {s: p[g] for s, p in test_preds.items()}) if tests else None
            run.finish({"total": n_total, "trainable": run.trainable.count(model),
                        "metric": f"{first_dev}/{spec.metric}", "device": str(device), "threads": threads,
                        "recipe": recipe.name, "torch": torch.__version__, "machine": machine,
                        "parameter_bytes": parameter_bytes(model),
                        **({"compile_cache": cache_report()} if fwd is not model else {}),
                        **({"pack": copies} if not alone else {}),
                        **({"pack_halved_from": list(halved_from)} if halved_from else {})}, tested)
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
    for name in ("epochs", "batch_size", "eval_batch_size", "max_length", "threads", "attempt"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=d[name].default)
    for name in ("warmup_ratio", "weight_decay", "max_grad_norm") + (() if member else ("fraction",)):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=d[name].default)
    parser.add_argument("--compile", choices=("auto", "true", "false"), default="auto")
    parser.add_argument("--recipe", choices=RECIPES, default="auto",
                        help="fp32 (exact); bf16 (autocast where the device has native bf16, else fp32); gpu: bf16 "
                             "autocast and fused AdamW (also on CPU); auto: gpu on CUDA, else fp32")
    parser.add_argument("--dtype", choices=tuple(WEIGHT_DTYPES), default=d["dtype"].default,
                        help="dtype of the frozen weights (trained tensors stay fp32); bfloat16 needs a bf16 "
                             "recipe and refuses --method full")
    parser.add_argument("--no-state", dest="save_state", action="store_false",
                        help="write no state.safetensors: metrics and predictions only (training.save_state: false)")
    if not member:
        parser.add_argument("--mask", type=Path, help="fisher: masks parquet")
        parser.add_argument("--save-model", type=Path, help="save the final model here (drift)")


def run(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in fields}
    kwargs["dev"], kwargs["test"] = tuple(args.dev), tuple(args.test)
    finetune(FinetuneConfig(**kwargs))
    return 0
