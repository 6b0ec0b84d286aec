"""Training: the one fine-tuning loop (a run alone is a pack of one), packed runs, per-run state and
resume checkpoints, and the recipe (fp32, bf16 autocast) a run computes with."""
