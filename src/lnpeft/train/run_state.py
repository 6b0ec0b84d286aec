"""One run's state inside the training loop: optimizer, schedule, clipping, epochs so far, best
epoch, its files, and its resume checkpoint.

Each run of a pack keeps all of this for itself, so it writes exactly the run folder a run alone
writes, and its resume.pt has the layout a run alone writes: a run killed inside a pack may resume
alone, or in another pack, and the other way round.

Files in the run folder (all atomic; epochs.parquet last, as the completion marker):
  epochs.parquet       one row per epoch (artifacts "epochs")
  predictions.parquet  best epoch's predictions on every dev and test split (artifacts "predictions")
  state.safetensors    best epoch's trained entries (everything for `full`); not with --no-state
  run.json             the resolved options plus counts and the best epoch
  resume.pt            per-epoch checkpoint while running; removed at the end
  failed.json          instead of epochs.parquet when the run failed inside a pack (its message)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from lnpeft.data.artifacts import atomic_path, write_json, write_parquet
from lnpeft.model.methods import TrainableSet
from lnpeft.model.state_file import save_safetensors
from lnpeft.train.packing import RunParameters

RESUME_FORMAT = 2
"""resume.pt layout; 2: partly trained tensors' entries stored apart (`partial`)."""

EXECUTION_OPTIONS = ("threads", "compile", "attempt", "save_state")
"""Options a resumed run may change: threads and compilation are execution choices (Snakemake's
cores, the device), and save_state only which files the run writes at its end, not what it trains
(a grid switched to `training.save_state: false` between sittings resumes its cut-off runs)."""


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def save_resume(ckpt: dict, path: Path) -> None:
    # a Python file, not a path: torch's own file writer reports a full disk as "unexpected pos";
    # through a file object the OSError(ENOSPC) survives as the error's context
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(ckpt, fh)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float,
                   device: torch.device, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over one run's trained tensors and entries (fused: default on CUDA; lnpeft.train.recipe)."""
    fused = device.type == "cuda" if fused is None else fused
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


class RunState:
    """Everything one run owns besides the shared frozen model."""

    def __init__(self, cfg, name: str, trainable: TrainableSet, params: RunParameters,
                 full_state: Callable[[], dict[str, torch.Tensor]] | None, steps: int,
                 device: torch.device, fused: bool | None = None, recipe: str | None = None) -> None:
        self.cfg, self.name, self.trainable, self.params = cfg, name, trainable, params
        self.recipe = recipe or cfg.recipe  # resolved on this device (fp32 | gpu): what the numbers depend on
        self.out = Path(cfg.out)
        self.full_state = full_state  # `full` saves the whole model, not its trained entries
        self.optimizer = make_optimizer(params.parameters(), cfg.lr, cfg.weight_decay, device, fused)
        self.opt_params = params.parameters()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(int(cfg.warmup_ratio * steps), steps))
        self.rows: list[dict] = []
        self.best_score, self.best_epoch, self.start_epoch = -math.inf, 0, 1
        self.best_predictions: pd.DataFrame | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.error: Exception | None = None
        self.rng: dict | None = None  # the generators' states of its checkpoint, if it resumed
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "failed.json").unlink(missing_ok=True)

    @property
    def resume_path(self) -> Path:
        return self.out / "resume.pt"

    def active(self, epoch: int) -> bool:
        """Trains in `epoch`: not failed, and that epoch is not in its checkpoint already."""
        return self.error is None and epoch >= self.start_epoch

    # ---- one optimizer step, the same for a run alone and a member of a pack
    def step(self) -> None:
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.opt_params, self.cfg.max_grad_norm)
        self.optimizer.step()  # allocates AdamW's state on the first step: can run out of memory too
        self.params.sync()  # partly trained tensors take their entries' new values
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What state.safetensors holds: every tensor for full; trained tensors, and for partly
        trained ones only their trained entries (`{name}@indices`, `{name}@values`), for PEFT methods."""
        if self.full_state is not None:
            return self.full_state()
        state = {n: p.detach().cpu().contiguous() for n, p in self.params.whole.items()}
        for name, idx in self.params.indices.items():
            state[f"{name}@indices"] = idx.detach().cpu().clone()
            state[f"{name}@values"] = self.params.values[name].detach().cpu().contiguous()
        return state

    # ---- resume
    def resume(self) -> None:
        """Load resume.pt if this run has one; checks it is a checkpoint of this very run."""
        if not self.resume_path.exists():  # a fresh start: an earlier run's files are not this run's
            for name in ("epochs.parquet", "run.json", "predictions.parquet", "state.safetensors"):
                (self.out / name).unlink(missing_ok=True)
            return
        ckpt = torch.load(self.resume_path, map_location="cpu", weights_only=False)
        if ckpt.get("format") != RESUME_FORMAT:
            raise ValueError(f"{self.resume_path}: checkpoint written by another lnpeft version "
                             f"(format {ckpt.get('format', 1)}, this one reads {RESUME_FORMAT}); "
                             "delete it to start the run over")
        saved = {**_defaults_of(self.cfg, ckpt["config"]), **ckpt["config"]}
        differs = sorted(k for k, v in self.cfg.to_json().items()
                         if k not in EXECUTION_OPTIONS and saved.get(k) != v)
        if differs:
            raise ValueError(f"{self.resume_path}: checkpoint of a run with other options "
                             f"({', '.join(differs)}); delete it to start over")
        # `--recipe auto` is fp32 on a CPU and bf16 autocast on a GPU: compare what it resolved to
        trained = ckpt.get("resolved_recipe") or _legacy_recipe(ckpt)
        if trained != self.recipe:
            raise ValueError(f"{self.resume_path}: checkpoint trained with recipe {trained!r} "
                             f"({'on a GPU' if ckpt.get('rng_cuda') is not None else 'on a CPU'}), resumed with "
                             f"{self.recipe!r} here; its later epochs would compute otherwise. Resume on the "
                             f"same kind of device, pass --recipe {trained}, or delete it to start over")
        with torch.no_grad():
            for name, value in ckpt["params"].items():
                self.params.whole[name].copy_(value)
            for name, value in ckpt["partial"].items():
                self.params.values[name].copy_(value)
        self.params.sync()
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.rng = {"cpu": ckpt["rng_cpu"], "cuda": ckpt.get("rng_cuda")}
        self.rows, self.best_score, self.best_epoch = ckpt["rows"], ckpt["best_score"], ckpt["best_epoch"]
        self.best_predictions, self.best_state = ckpt["best_predictions"], ckpt["best_state"]
        self.start_epoch = ckpt["epoch"] + 1
        if self.best_state is None:  # the best epoch is the checkpointed one
            self.best_state = self.trained_state()
        print(f"{self.name}: resuming after epoch {ckpt['epoch']}", flush=True)

    # ---- the end of an epoch
    def end_epoch(self, row: dict, score: float, dev_predictions: pd.DataFrame) -> None:
        """Record the epoch's row; on a new best score keep its dev predictions and trained state
        (in memory and in the checkpoint: the run's files are written once, by `finish`)."""
        self.rows.append(row)
        if score > self.best_score:
            self.best_score, self.best_epoch = score, row["epoch"]
            self.best_predictions = dev_predictions
            self.best_state = self.trained_state()

    def restore_best(self) -> None:
        """Put the best epoch's trained values back into the run's tensors (for its test predictions)."""
        with torch.no_grad():
            for name, p in self.params.whole.items():
                p.copy_(self.best_state[name])
            for name, v in self.params.values.items():
                v.copy_(self.best_state[f"{name}@values"])
        self.params.sync()

    def checkpoint(self, epoch: int, device: torch.device) -> None:
        """A killed run restarts after the last completed epoch."""
        save_resume({
            "config": self.cfg.to_json(), "epoch": epoch, "rows": self.rows,
            "best_score": self.best_score, "best_epoch": self.best_epoch,
            "best_predictions": self.best_predictions,
            "best_state": None if self.best_epoch == epoch else self.best_state,
            "format": RESUME_FORMAT, "resolved_recipe": self.recipe,
            "params": {n: p.detach().cpu() for n, p in self.params.whole.items()},
            "partial": {n: v.detach().cpu() for n, v in self.params.values.items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
        }, self.resume_path)

    def finish(self, info: dict, test_predictions: pd.DataFrame | None = None) -> pd.DataFrame:
        """The best epoch's predictions (dev, then test) and trained state, run.json, then
        epochs.parquet (the completion marker); the checkpoint goes."""
        predictions = self.best_predictions if test_predictions is None else pd.concat(
            [self.best_predictions, test_predictions], ignore_index=True)
        write_parquet(predictions, self.out / "predictions.parquet", "predictions")
        if self.cfg.save_state:
            save_safetensors(self.best_state, self.out / "state.safetensors")
        counts = {k: info[k] for k in ("total", "trainable")}
        rest = {k: v for k, v in info.items() if k not in counts}
        write_json({"options": self.cfg.to_json(), **counts, "best_epoch": self.best_epoch,
                    "best_score": self.best_score, **rest}, self.out / "run.json")
        epochs = pd.DataFrame(self.rows)
        write_parquet(epochs, self.out / "epochs.parquet", "epochs")
        self.resume_path.unlink(missing_ok=True)
        return epochs

    def fail(self, error: Exception) -> None:
        """A member of a pack stops; its folder says why, and nothing in it looks complete. The
        checkpoint stays: the run resumes from its last finite epoch once the cause is fixed."""
        self.error = error
        (self.out / "epochs.parquet").unlink(missing_ok=True)
        write_json({"run": self.name, "error": type(error).__name__, "message": str(error)},
                   self.out / "failed.json")
        print(f"{self.name}: failed: {error}", flush=True)


def _legacy_recipe(ckpt: dict) -> str:
    """The resolved recipe of a checkpoint written before it was stored: `auto` was the GPU recipe
    when the run was on CUDA (it saved CUDA's generator state), else fp32."""
    literal = (ckpt.get("config") or {}).get("recipe", "auto")
    if literal != "auto":
        return literal
    return "gpu" if ckpt.get("rng_cuda") is not None else "fp32"


def _defaults_of(cfg, saved: dict) -> dict:
    """The defaults (serialised as to_json does) of the options a checkpoint lacks: an option newer
    than the checkpoint is how the older version ran, its default."""
    missing = {f.name: f.default for f in dataclasses.fields(cfg)
               if f.name not in saved and f.default is not dataclasses.MISSING}
    return {k: v for k, v in dataclasses.replace(cfg, **missing).to_json().items() if k in missing}
