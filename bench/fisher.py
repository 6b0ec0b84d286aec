"""Fisher information: batched per-sample gradients (hooks) vs the naive batch-size-1 loop.

Two scopes: `layernorm` (the output LayerNorms the masks rank) and `all` (the eight components of
Table 1, what `lnpeft fisher` computes). The batched path is lnpeft's own (SquaredGradSampler over
length-grouped, bucket-padded batches, one forward/backward per batch); the naive loop runs one
unpadded example at a time and squares autograd's gradient. Both run in fp32 in eval mode, like
the fisher stage. Also times a layernorm training step on the same batches (issue 7: the Fisher
pass should run at >= 0.8x a layernorm step's examples/s).

  python bench/fisher.py            # MiniLM shape, RTE and SST-2
  python bench/fisher.py --large    # BERT-large shape
  python bench/fisher.py --quick    # tiny shape (CI)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from train_step import Stepper  # noqa: E402

from lnpeft.analysis.fisher import component_modules, per_sample_loss_sum  # noqa: E402
from lnpeft.analysis.grad_sample import SquaredGradSampler  # noqa: E402
from lnpeft.data.batching import Encoded, collate, length_grouped_batches  # noqa: E402
from lnpeft.model.architectures import for_config  # noqa: E402


def scope_modules(model, scope: str) -> dict[str, torch.nn.Module]:
    modules = component_modules(model)
    if scope == "all":
        return modules
    arch = for_config(model.config)
    # the LayerNorm set only (the paper's: not attention.output.LayerNorm, though both end in "output.LayerNorm")
    return {k: m for k, m in modules.items() if arch.is_layernorm(f"{k}.weight")}


def batched_fisher(model, batches: list[dict], modules: dict, device: torch.device) -> tuple[dict, float]:
    """(name -> sum of squared per-sample gradients, seconds) through lnpeft's hooks."""
    model.eval()
    with SquaredGradSampler(modules) as sampler:
        common.sync(device)
        t0 = common.clock()
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits
            sampler.backward(per_sample_loss_sum(logits, labels), batch["attention_mask"])
        common.sync(device)
        seconds = common.clock() - t0
    return {k: v.double().cpu() for k, v in sampler.sums.items()}, seconds


def naive_fisher(model, data: Encoded, rows: np.ndarray, modules: dict,
                 device: torch.device) -> tuple[dict, float]:
    """The reference: one unpadded example at a time, autograd's gradient squared."""
    model.eval()
    params = {f"{prefix}.{n}": p for prefix, m in modules.items() for n, p in m.named_parameters(recurse=False)}
    sums = {k: torch.zeros_like(p, dtype=torch.float64, device="cpu") for k, p in params.items()}
    common.sync(device)
    t0 = common.clock()
    for i in rows:
        ids = torch.tensor(data.input_ids[i], device=device)[None]
        types = torch.tensor(data.token_type_ids[i], device=device)[None]
        logits = model(input_ids=ids, token_type_ids=types, attention_mask=torch.ones_like(ids)).logits
        loss = per_sample_loss_sum(logits, torch.tensor([data.labels[i]], device=device))
        grads = torch.autograd.grad(loss, list(params.values()))
        for k, g in zip(params, grads):
            sums[k] += g.detach().double().cpu() ** 2
    common.sync(device)
    return sums, common.clock() - t0


def relative_error(batched: dict, naive: dict, floor: float = 1e-8) -> float:
    """max over tensors of max|batched - naive| / max|naive|, each tensor's scale floored at
    `floor` x the largest Fisher entry: the attention key bias has an exact Fisher of 0 (softmax
    ignores a shift shared by all keys), so both paths return rounding noise (~1e-24) there."""
    top = max(float(ref.abs().max()) for ref in naive.values())
    worst = 0.0
    for k, ref in naive.items():
        scale = max(float(ref.abs().max()), floor * top)
        if scale > 0:
            worst = max(worst, float((batched[k] - ref).abs().max()) / scale)
    return worst


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shape, few samples (seconds)")
    ap.add_argument("--large", action="store_true", help="BERT-large shape instead of MiniLM")
    ap.add_argument("--shape", help="explicit shape (tiny, minilm, bert-large)")
    ap.add_argument("--tasks", default="rte,sst2")
    ap.add_argument("--samples", type=int, help="examples per task (default 64; 16 quick)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time (a busy shared CPU machine; with --threads 1)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/fisher.json"))
    args = ap.parse_args(argv)
    device = common.pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    common.set_clock(args.clock)
    shape = args.shape or ("tiny" if args.quick else "bert-large" if args.large else "minilm")
    n = args.samples or (16 if args.quick else 64)
    batch_size = min(args.batch_size, n)

    model = common.build_model(shape, num_labels=2).to(device)
    # pretrained-like LayerNorms (not exactly 1 and 0), so weight and bias entries differ
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    records, ratios = [], {}
    for task in args.tasks.split(","):
        data = common.load_task(task, n, args.max_length, seed=1, split="validation" if args.quick else "train")
        rows = np.arange(len(data))
        order = length_grouped_batches(data.lengths, batch_size, seed=None)
        batches = [collate(data, b) for b in order]
        # warm-up: one batch through each path (allocator, kernels)
        batched_fisher(model, batches[:1], scope_modules(model, "layernorm"), device)
        for scope in ("layernorm", "all"):
            modules = scope_modules(model, scope)
            fast, t_fast = batched_fisher(model, batches, modules, device)
            slow, t_slow = naive_fisher(model, data, rows, modules, device)
            rec = {"shape": shape, "task": task, "scope": scope, "samples": len(data),
                   "batch_size": batch_size, "tensors": len(slow),
                   "entries": int(sum(v.numel() for v in slow.values())),
                   "batched_s": t_fast, "naive_s": t_slow,
                   "batched_samples_per_s": len(data) / t_fast, "naive_samples_per_s": len(data) / t_slow,
                   "speedup": t_slow / t_fast, "relative_error": relative_error(fast, slow)}
            records.append(rec)
        # a layernorm training step on the same batches (train mode, as fine-tuning runs it)
        stepper = Stepper(model, "layernorm", device, compile_=False, mask_path=None)
        t = common.time_calls(lambda i: stepper.step(batches[i % len(batches)]), len(batches), 1, device)
        ln_ex_s = len(data) / sum(t)
        del stepper
        model.zero_grad(set_to_none=True)
        ln_fisher = next(r for r in records if r["task"] == task and r["scope"] == "layernorm")
        ratios[f"{shape}/{task}"] = {
            "layernorm_step_examples_per_s": ln_ex_s,
            "fisher_layernorm_over_layernorm_step": ln_fisher["batched_samples_per_s"] / ln_ex_s,
            "speedup_layernorm": ln_fisher["speedup"],
            "speedup_all": next(r["speedup"] for r in records if r["task"] == task and r["scope"] == "all"),
        }
    on_gpu = device.type == "cuda"
    tgts = []
    for key, r in ratios.items():
        if on_gpu and key.startswith("bert-large"):
            tgts.append({"target": f"batched Fisher >= 20x naive loop ({key}, layernorm)",
                         "value": r["speedup_layernorm"], "met": r["speedup_layernorm"] >= 20})
        v = r["fisher_layernorm_over_layernorm_step"]
        tgts.append({"target": f"batched Fisher >= 0.8x layernorm step throughput ({key})", "value": v, "met": v >= 0.8})
    for rec in records:
        tgts.append({"target": f"relative error < 1e-4 fp32 ({rec['shape']}/{rec['task']}/{rec['scope']})",
                     "value": rec["relative_error"], "met": rec["relative_error"] < 1e-4})
    result = {"benchmark": "fisher", "machine": common.machine_info(device),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "shape": shape, "results": records, "ratios": ratios, "targets": tgts}
    common.write_json(result, args.out)
    for rec in records:
        print(f"fisher {rec['shape']}/{rec['task']}/{rec['scope']}: batched {rec['batched_samples_per_s']:.1f}/s "
              f"naive {rec['naive_samples_per_s']:.1f}/s speedup {rec['speedup']:.1f}x "
              f"rel_err {rec['relative_error']:.1e} [{device}]")
    for key, r in ratios.items():
        print(f"fisher {key}: layernorm step {r['layernorm_step_examples_per_s']:.1f} ex/s, "
              f"fisher/step {r['fisher_layernorm_over_layernorm_step']:.2f}")
    return result


if __name__ == "__main__":
    main()
