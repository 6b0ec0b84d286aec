"""One fine-tuning run of (task, method, lr, seed[, mask, fraction]) from an init checkpoint.

nanoGPT order, top to bottom: options, seed, load init, select trainable entries, optimizer over
those only, epoch loop (train, evaluate every dev split, write the row, keep the best epoch's
predictions and state, checkpoint for resumption). No trainer or callback framework.

Outputs in --out (all atomic; epochs.parquet last, as the completion marker):
  epochs.parquet       one row per epoch (artifacts "epochs")
  predictions.parquet  best epoch's predictions on every dev and test split (artifacts "predictions")
  state.safetensors    best epoch's trained entries (everything for `full`)
  run.json             the resolved options plus counts and the best epoch
  resume.pt            per-epoch checkpoint while running; removed at the end
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lnpeft.artifacts import atomic_dir, atomic_path, write_json, write_parquet
from lnpeft.batching import Encoded, collate, length_grouped_batches, load_split, model_inputs
from lnpeft.errors import OutOfMemoryError, is_oom
from lnpeft.init import verify_init
from lnpeft.methods import METHODS, MethodOptions, TrainableSet, select
from lnpeft.metrics import compute_metrics
from lnpeft.numerics import pin_threads
from lnpeft.partial_tensors import PartialTensors
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


RESUME_FORMAT = 2
"""resume.pt layout; 2: partly trained tensors' entries stored apart (`partial`)."""


def split_name(path: Path) -> str:
    """results/data/mnli/validation_matched.parquet -> validation_matched."""
    return Path(path).name.removesuffix(".parquet")


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
            amp: bool) -> np.ndarray:
    """Label ids (float) or regression scores for every example, in the split's row order."""
    model.eval()
    out = np.empty(len(data), dtype=np.float64)
    for idx in length_grouped_batches(data.lengths, batch_size, seed=None):
        batch = collate(data, idx)
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(**model_inputs(model, batch, device)).logits.float()
        except RuntimeError as err:
            if not is_oom(err):
                raise
            raise OutOfMemoryError(
                f"out of memory while predicting a batch of {len(idx)} examples x "
                f"{batch['input_ids'].shape[1]} tokens on {device}; lower training.eval_batch_size "
                f"(--eval-batch-size, now {batch_size}) or training.max_length (--max-length)"
            ) from err
        out[idx] = (logits[:, 0] if regression else logits.argmax(-1)).cpu().numpy()
    return out


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


def _linear_schedule(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def prepare_trainable(model, trainable: TrainableSet) -> PartialTensors:
    """requires_grad on the whole trained tensors only (no weight gradients for anything else);
    partly trained tensors stay frozen and train their entries through `PartialTensors`."""
    whole = set(trainable.whole)
    for name, p in model.named_parameters():
        p.requires_grad_(name in whole)
    return PartialTensors(model, trainable)


def make_optimizer(model, trainable: TrainableSet, partial: PartialTensors, lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.AdamW:
    """AdamW over the whole trained tensors and the partly trained tensors' entries (fused on CUDA)."""
    params = dict(model.named_parameters())
    return torch.optim.AdamW([params[n] for n in trainable.whole] + partial.parameters(), lr=lr,
                             weight_decay=weight_decay, fused=device.type == "cuda")


def _trained_state(model, trainable: TrainableSet, partial: PartialTensors, method: str) -> dict[str, torch.Tensor]:
    """What state.safetensors holds: every tensor for full; trained tensors, and for partly trained
    ones only their trained entries (`{name}@indices`, `{name}@values`), for PEFT methods."""
    params = dict(model.named_parameters())
    if method == "full":
        return {n: p.detach().cpu().contiguous() for n, p in model.state_dict().items()}
    state = {n: params[n].detach().cpu().contiguous() for n in trainable.whole}
    for name, idx in trainable.partial.items():
        state[f"{name}@indices"] = idx.clone()
        state[f"{name}@values"] = partial.values[name].detach().cpu().contiguous()
    return state


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


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def _save_resume(ckpt: dict, path: Path) -> None:
    # a Python file, not a path: torch's own file writer reports a full disk as "unexpected pos";
    # through a file object the OSError(ENOSPC) survives as the error's context
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(ckpt, fh)


# ---------------------------------------------------------------- the run


def finetune(cfg: FinetuneConfig) -> pd.DataFrame:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = get_task(cfg.task)
    regression = spec.is_regression
    verify_init(cfg.init)  # a corrupted or changed init fails here, before any training
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run_name = f"{cfg.task}/{cfg.method}/lr{cfg.lr:g}_seed{cfg.seed}"
    threads = pin_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"  # bf16 autocast on GPU; exact fp32 on CPU

    # seed, then load the init (its head was seeded once per (task, seed) by `lnpeft init`)
    _seed_everything(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.init)
    model = AutoModelForSequenceClassification.from_pretrained(cfg.init)
    if model.config.num_labels != spec.num_labels:
        raise ValueError(f"{cfg.init}: model has {model.config.num_labels} labels, task {cfg.task} "
                         f"needs {spec.num_labels}; rebuild the init for this task")
    model.to(device)

    train = load_split(cfg.train, tokenizer, cfg.max_length)
    if np.isnan(train.labels).any():
        raise ValueError(f"{cfg.train}: training split has unlabelled rows")
    devs = {split_name(p): load_split(p, tokenizer, cfg.max_length) for p in cfg.dev}
    tests = {split_name(p): load_split(p, tokenizer, cfg.max_length) for p in cfg.test}
    first_dev = split_name(cfg.dev[0])

    # select trainable entries: whole tensors get requires_grad, every other tensor is frozen (no
    # weight gradients); partly trained tensors (random, fisher) train only their entries
    trainable = select(model, cfg.method, MethodOptions(cfg.seed, cfg.fraction, cfg.mask))
    n_trainable = trainable.count(model)
    n_total = sum(p.numel() for p in model.parameters())
    params = dict(model.named_parameters())
    partial = prepare_trainable(model, trainable)
    optimizer = make_optimizer(model, trainable, partial, cfg.lr, cfg.weight_decay, device)
    opt_params = [p for group in optimizer.param_groups for p in group["params"]]
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(warmup, total_steps))
    sync_every = 1 if device.type == "cpu" else 50  # loss reads stall a GPU, not a CPU
    fwd = model
    if cfg.compile == "true" or (cfg.compile == "auto" and device.type == "cuda"):
        fwd = torch.compile(model, dynamic=True)

    # resume from the last completed epoch if a checkpoint of this very run exists
    resume_path = out / "resume.pt"
    rows: list[dict] = []
    best_score, best_epoch, start_epoch = -math.inf, 0, 1
    best_predictions, best_state = None, None
    if resume_path.exists():
        ckpt = torch.load(resume_path, map_location="cpu", weights_only=False)
        if ckpt.get("format") != RESUME_FORMAT:
            raise ValueError(f"{resume_path}: checkpoint written by another lnpeft version "
                             f"(format {ckpt.get('format', 1)}, this one reads {RESUME_FORMAT}); "
                             "delete it to start the run over")
        # threads and compilation are execution choices (Snakemake's cores, the device): a rerun may differ
        differs = sorted(k for k, v in cfg.to_json().items()
                         if k not in ("threads", "compile") and ckpt["config"].get(k) != v)
        if differs:
            raise ValueError(f"{resume_path}: checkpoint of a run with other options ({', '.join(differs)}); "
                             "delete it to start over")
        with torch.no_grad():
            for name, value in ckpt["params"].items():
                params[name].copy_(value)
            for name, value in ckpt["partial"].items():
                partial.values[name].copy_(value)
        partial.sync_()
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng_cpu"])
        if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"])
        rows, best_score, best_epoch = ckpt["rows"], ckpt["best_score"], ckpt["best_epoch"]
        best_predictions, best_state = ckpt["best_predictions"], ckpt["best_state"]
        start_epoch = ckpt["epoch"] + 1
        # Snakemake deletes the outputs of an incomplete job before rerunning it: put the best
        # epoch's files back from the checkpoint (None: the best epoch is the checkpointed one)
        if best_state is None:
            best_state = _trained_state(model, trainable, partial, cfg.method)
        if not (out / "predictions.parquet").exists() or not (out / "state.safetensors").exists():
            write_parquet(best_predictions, out / "predictions.parquet", "predictions")
            _save_safetensors(best_state, out / "state.safetensors")
        print(f"{run_name}: resuming after epoch {ckpt['epoch']}", flush=True)

    print(f"{run_name}: {n_trainable:,} of {n_total:,} parameters trainable "
          f"({100 * n_trainable / n_total:.4f}%), {len(train)} training examples, device {device}",
          flush=True)
    for epoch in range(start_epoch, cfg.epochs + 1):
        # ---- train
        model.train()
        t0 = time.perf_counter()
        tokens, padded = 0, 0
        # data order depends on (seed, epoch) only, so a resumed run sees the same batches
        batches = length_grouped_batches(train.lengths, cfg.batch_size, seed=cfg.seed * 100_003 + epoch)
        sizes = np.array([len(b) for b in batches], dtype=np.float64)
        # per-step losses stay on the device: reading one (.item()) would stall the GPU every step
        losses = torch.zeros(len(batches), device=device)
        checked = 0  # steps whose loss was read and found finite
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", mininterval=5)
        for step, idx in enumerate(bar, start=1):
            batch = collate(train, idx)
            tokens += int(batch["attention_mask"].sum())  # counted on the CPU copy: no device sync
            padded += batch["input_ids"].numel()
            batch = {k: (v.pin_memory() if amp else v).to(device, non_blocking=True) for k, v in batch.items()}
            try:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = fwd(**model_inputs(model, batch)).logits
                loss = _loss(logits, batch["labels"], regression)
                losses[step - 1] = loss.detach()
                loss.backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(opt_params, cfg.max_grad_norm)
                optimizer.step()  # allocates AdamW's state on the first step: can run out of memory too
            except RuntimeError as err:
                if not is_oom(err):
                    raise
                raise OutOfMemoryError(
                    f"run {run_name} ({out}): out of memory at epoch {epoch}, step {step} (a batch of "
                    f"{len(idx)} examples x {batch['input_ids'].shape[1]} tokens on {device}); lower "
                    f"training.batch_size (--batch-size, now {cfg.batch_size}) or training.max_length "
                    f"(--max-length, now {cfg.max_length})"
                ) from err
            partial.sync_()  # the partly trained tensors take their entries' new values
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if step % sync_every == 0 or step == len(batches):
                checked = _check_losses(losses, checked, step, f"run {run_name} ({out})", epoch)
                bar.set_postfix(loss=f"{float(losses[:step].mean()):.4f}",
                                ex_s=f"{sizes[:step].sum() / (time.perf_counter() - t0):.1f}", refresh=False)
        seconds = time.perf_counter() - t0
        seen = int(sizes.sum())
        loss_sum = float((losses.cpu().double().numpy() * sizes).sum())

        # ---- evaluate every dev split
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "seconds": seconds, "tokens": tokens,
               "padded_tokens": padded, "trainable": n_trainable, "lr": cfg.lr}
        dev_preds = {}
        for split, data in devs.items():
            dev_preds[split] = predict(model, data, cfg.eval_batch_size, device, regression, amp)
            for metric, value in compute_metrics(spec, data.labels, dev_preds[split]).items():
                row[f"{split}/{metric}"] = value
        rows.append(row)
        score = row[f"{first_dev}/{spec.metric}"]
        print(f"{run_name}: epoch {epoch} train_loss {row['train_loss']:.4f} "
              f"{first_dev}/{spec.metric} {score:.4f} ({seen / seconds:.1f} ex/s)", flush=True)

        # ---- keep the best epoch's predictions and trained state
        if score > best_score:
            best_score, best_epoch = score, epoch
            frames = [pd.DataFrame({"split": s, "idx": devs[s].idx, "prediction": p})
                      for s, p in dev_preds.items()]
            frames += [pd.DataFrame({"split": s, "idx": d.idx,
                                     "prediction": predict(model, d, cfg.eval_batch_size, device,
                                                           regression, amp)})
                       for s, d in tests.items()]
            best_predictions = pd.concat(frames, ignore_index=True)
            best_state = _trained_state(model, trainable, partial, cfg.method)
            write_parquet(best_predictions, out / "predictions.parquet", "predictions")
            _save_safetensors(best_state, out / "state.safetensors")

        # ---- checkpoint: a killed run restarts after the last completed epoch
        _save_resume({
            "config": cfg.to_json(), "epoch": epoch, "rows": rows,
            "best_score": best_score, "best_epoch": best_epoch, "best_predictions": best_predictions,
            "best_state": None if best_epoch == epoch else best_state,
            "format": RESUME_FORMAT,
            "params": {n: params[n].detach().cpu() for n in trainable.whole},
            "partial": {n: v.detach().cpu() for n, v in partial.values.items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
        }, resume_path)

    if cfg.save_model is not None:
        partial.remove_hooks()  # the model's tensors already hold the trained entries
        with atomic_dir(cfg.save_model) as tmp:  # complete or absent, as every other output
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    write_json({"options": cfg.to_json(), "total": n_total, "trainable": n_trainable,
                "best_epoch": best_epoch, "best_score": best_score, "metric": f"{first_dev}/{spec.metric}",
                "device": str(device), "threads": threads, "torch": torch.__version__}, out / "run.json")
    epochs = pd.DataFrame(rows)
    write_parquet(epochs, out / "epochs.parquet", "epochs")
    resume_path.unlink(missing_ok=True)
    return epochs


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = FinetuneConfig.__dataclass_fields__
    parser.add_argument("--init", required=True, type=Path, help="init folder (save_pretrained + tokenizer)")
    parser.add_argument("--train", required=True, type=Path)
    parser.add_argument("--dev", required=True, type=Path, action="append",
                        help="dev split parquet (repeat; the first picks the best epoch)")
    parser.add_argument("--test", type=Path, action="append", default=[], help="test split parquet (repeat)")
    parser.add_argument("--task", required=True)
    parser.add_argument("--method", required=True, choices=sorted(METHODS))
    parser.add_argument("--lr", required=True, type=float)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path, help="run directory")
    for name in ("epochs", "batch_size", "eval_batch_size", "max_length", "threads"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=d[name].default)
    for name in ("warmup_ratio", "weight_decay", "max_grad_norm", "fraction"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=d[name].default)
    parser.add_argument("--compile", choices=("auto", "true", "false"), default="auto")
    parser.add_argument("--mask", type=Path, help="fisher: masks parquet")
    parser.add_argument("--save-model", type=Path, help="save the final model here (drift)")


def run(args: argparse.Namespace) -> int:
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in fields}
    kwargs["dev"], kwargs["test"] = tuple(args.dev), tuple(args.test)
    finetune(FinetuneConfig(**kwargs))
    return 0
