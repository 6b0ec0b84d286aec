"""Data: the task registry (GLUE and custom tasks), readers of GLUE TSVs and users' files, the typed
parquet artifacts every stage reads and writes, tokenised batches, and the metrics."""
