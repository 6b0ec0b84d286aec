#!/usr/bin/env bash
# The prepared device check (issues 13, 23): on a lent GPU machine, within about 9 minutes, in the
# order that gets the most numbers back first (a device session has 15 minutes, the start included):
#   1. the training-step benchmark at the BERT-large shape on real GLUE lengths, eager (every method,
#      packs of 4 and 16): torch.compile of BERT-large took over 60 s per configuration on the lent
#      H200 (2026-12-04), so the compiled benchmark cannot fit beside the rest;
#   2. the Fisher benchmark, then `lnpeft estimate` and the paper run's time requests from 1 and 2;
#   3. the gpu-marked tests (the CUDA recipe alone, packed and with bf16 weights, against fp32 on CPU;
#      about 100 s each there, mostly compiling), stopped at the first failure;
#   4. if time is left, torch.compile's shared cache: one compiled run twice in one cache folder.
# Everything lands in $OUT: machine.json, status.txt, log.txt (every step's output) and the JSON.
#   here:     bash bench/gpu_prepare.sh            (writes .device/: GLUE samples, tokenizer, wheels)
#   device:   run(command="bash bench/gpu_check.sh", carry=[".device"], timeout_s=560)
# On CPU, as a smoke test of the script itself: GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 OUT=/tmp/x bash bench/gpu_check.sh
# A step that fails or runs out of its time is recorded in $OUT/status.txt; the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
if [ "$DEVICE" = cuda ] && compgen -G ".device/wheels/*.whl" > /dev/null; then  # this project's pins, from gpu_prepare.sh
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .device/wheels/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -d .device/glue ] && export LNPEFT_GLUE_DIR=${LNPEFT_GLUE_DIR:-$PWD/.device/glue}
[ -d .device/tokenizer ] && export LNPEFT_TOKENIZER=${LNPEFT_TOKENIZER:-$PWD/.device/tokenizer}
if [ -n "${GPU_CHECK_QUICK:-}" ]; then SIZE=(--quick); FSIZE=(--quick); CSIZE=(--quick); else
  SIZE=(--shapes bert-large --methods full,layernorm,bitfit,random,fisher --baseline-methods none --pack 4,16)
  FSIZE=(--shape bert-large); CSIZE=(--shape minilm); fi
: > "$OUT/status.txt"
: > "$OUT/log.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/log.txt, record the status
  local name=$1 limit=$2; shift 2
  [ -n "${GPU_CHECK_QUICK:-}" ] && limit=$((limit * 4))  # the CPU smoke test shares its machine
  local t0=$SECONDS
  echo "=== $name" >> "$OUT/log.txt"
  timeout "$limit" "$@" >> "$OUT/log.txt" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - t0)) limit=$limit" | tee -a "$OUT/status.txt"
}

$PY - > "$OUT/machine.json" <<'PY'
import json, platform, subprocess, torch, transformers
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                     capture_output=True, text=True) if torch.cuda.is_available() else None
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "transformers": transformers.__version__, "gpu": smi.stdout.strip() if smi else None}, indent=2))
PY
step train_step_eager 150 $PY bench/train_step.py "${SIZE[@]}" --compile false --device "$DEVICE" \
  --out "$OUT/train_step_eager.json"
step fisher 90 $PY bench/fisher.py "${FSIZE[@]}" --device "$DEVICE" --out "$OUT/fisher.json"
if [ -s "$OUT/train_step_eager.json" ] && [ -s "$OUT/fisher.json" ]; then
  # the paper run priced, and its SLURM time limits asked, from the numbers just measured (eager:
  # an upper bound on the compiled run's time)
  shape=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["shapes"][-1])' "$OUT/train_step_eager.json")
  overlay=$(mktemp --suffix=.yaml)
  printf 'resources: {throughput: %s, fisher_throughput: %s, shape: %s}\n' \
    "$OUT/train_step_eager.json" "$OUT/fisher.json" "$shape" > "$overlay"
  step estimate 30 bash -c "$PY -m lnpeft.cli estimate --json --configfile config.yaml --configfile $overlay \
    > $OUT/estimate.json"
fi
if [ "$DEVICE" = cuda ]; then
  step gpu_tests 170 $PY -m pytest -m gpu -x -q -p no:cacheprovider -o addopts="" tests/test_gpu.py
fi
step compile_cache 90 $PY bench/compile_cache.py "${CSIZE[@]}" --device "$DEVICE" --out "$OUT/compile_cache.json"
cat "$OUT/status.txt"
! grep -v ' rc=0 ' "$OUT/status.txt" > /dev/null
