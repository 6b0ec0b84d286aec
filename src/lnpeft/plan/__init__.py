"""Planning: the workflow's config (loading, checks), which runs share a packed job, the cost
estimate of a grid and the SLURM time limits derived from it."""
