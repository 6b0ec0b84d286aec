"""Analysis: drift between two models (paper Eq. 1), the empirical Fisher from batched per-sample
gradients (Eq. 2), and the Fisher masks that choose LayerNorm subsets."""
