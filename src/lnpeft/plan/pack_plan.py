"""Which parameter-efficient runs train together: the packs of a config, derived deterministically.

A pack holds runs of one (task, seed, learning rate) and one stage: the Table 2 grid (bitfit,
layernorm, random) or the Fisher-subset runs of Figures 2 and 5 (scheme x fraction). Keeping the
stages apart lets the Table 2 runs start before any Fisher mask exists; keeping learning rates
apart means a learning rate added to the config makes new packs and retrains nothing. A group of
n runs becomes ceil(n / training.pack_size) packs of near-equal size, in config order. Adding a
method, scheme or fraction changes its groups' packs, and Snakemake retrains those packs.

Full fine-tuning is never packed (it trains every tensor). pack_size 1 packs nothing: the workflow
then runs one job per run, as rules `finetune` and `finetune_fisher_subset`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lnpeft.plan.workflow_config import fmt_lr, for_task, fraction_seeds, method_learning_rates

STAGES = ("grid", "fractions")


@dataclass(frozen=True)
class Member:
    """One run of a pack: its folder name under results/runs/{model}/{task}/ and how to train it."""

    name: str
    """bitfit, layernorm, random, or fisher-{scheme}-f{fraction}."""
    method: str
    scheme: str | None = None
    fraction: str | None = None


@dataclass(frozen=True)
class Pack:
    task: str
    seed: int
    lr: str
    """As in paths (fmt_lr)."""
    stage: str
    index: int
    members: tuple[Member, ...]

    @property
    def name(self) -> str:
        """{stage}-p{index}: the pack's file name under results/packs/{model}/{task}/lr{lr}_seed{seed}/."""
        return f"{self.stage}-p{self.index}"


def pack_size(config: dict) -> int:
    return int((config.get("training") or {}).get("pack_size", 1))


def _groups(config: dict, tasks: list[str]) -> dict[tuple[str, int, str, str], list[Member]]:
    groups: dict[tuple[str, int, str, str], list[Member]] = {}
    for task in tasks:
        task_config = for_task(config, task)  # its own learning-rate grids, if per_task gives them
        for method in config["methods"]:
            if method == "full":
                continue
            for lr in method_learning_rates(task_config, method):
                for seed in config["seeds"]:
                    groups.setdefault((task, seed, fmt_lr(lr), "grid"), []).append(Member(method, method))
        fractions = task_config["fractions"]
        for scheme in fractions["schemes"]:
            for value in fractions["values"]:
                for lr in fractions["learning_rates"]:
                    for seed in fraction_seeds(config):
                        f = fmt_lr(value)
                        groups.setdefault((task, seed, fmt_lr(lr), "fractions"), []).append(
                            Member(f"fisher-{scheme}-f{f}", "fisher", scheme, f))
    return groups


def plan_packs(config: dict, tasks: list[str]) -> list[Pack]:
    """Every pack of the config's parameter-efficient runs (none when training.pack_size is 1)."""
    size = pack_size(config)
    if size <= 1:
        return []
    packs = []
    for (task, seed, lr, stage), members in _groups(config, tasks).items():
        members = list(dict.fromkeys(members))  # a method listed twice is one run
        n = math.ceil(len(members) / size)
        base, extra = divmod(len(members), n)  # near-equal sizes: the first `extra` get one more
        start = 0
        for i in range(n):
            stop = start + base + (i < extra)
            packs.append(Pack(task, seed, lr, stage, i, tuple(members[start:stop])))
            start = stop
    return packs


def member_index(packs: list[Pack]) -> dict[tuple[str, int, str, str], Pack]:
    """(task, seed, lr, member name) -> its pack."""
    return {(p.task, p.seed, p.lr, m.name): p for p in packs for m in p.members}
