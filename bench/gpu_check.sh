#!/usr/bin/env bash
# The prepared device check (issue 13): on a lent GPU machine, within about 8 minutes, the
# gpu-marked tests (the CUDA training recipe, alone and packed, against fp32 on CPU) and the
# training-step (every method, and packs of 4 and 16 against their runs one by one, in one run: the
# packing gain at pack size 1, 4 and 16) and Fisher benchmarks
# at the BERT-large shape on real GLUE lengths, then `lnpeft estimate` and the
# paper run's time requests from those numbers. Everything lands in $OUT (JSON and logs).
#   here:     bash bench/gpu_prepare.sh            (writes .device/: GLUE samples, tokenizer)
#   device:   run(command="bash bench/gpu_check.sh", carry=[".device"], timeout_s=540)
# On CPU, as a smoke test of the script itself: GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 OUT=/tmp/x bash bench/gpu_check.sh
# A step that fails or runs out of its time is recorded in $OUT/status.txt; the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -d .device/glue ] && export LNPEFT_GLUE_DIR=${LNPEFT_GLUE_DIR:-$PWD/.device/glue}
[ -d .device/tokenizer ] && export LNPEFT_TOKENIZER=${LNPEFT_TOKENIZER:-$PWD/.device/tokenizer}
if [ -n "${GPU_CHECK_QUICK:-}" ]; then SIZE=(--quick); FSIZE=(--quick); else
  SIZE=(--shapes bert-large --methods full,layernorm,bitfit,random,fisher --baseline-methods full,layernorm --pack 4,16)
  FSIZE=(--shape bert-large); fi
: > "$OUT/status.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - t0)) limit=$limit" | tee -a "$OUT/status.txt"
}

$PY - > "$OUT/machine.json" <<'PY'
import json, platform, subprocess, torch
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                     capture_output=True, text=True) if torch.cuda.is_available() else None
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                  "cuda": torch.version.cuda, "gpu": smi.stdout.strip() if smi else None}, indent=2))
PY
if [ "$DEVICE" = cuda ]; then
  step gpu_tests 150 $PY -m pytest -m gpu -q -p no:cacheprovider -o addopts="" tests/test_gpu.py
fi
step train_step 300 $PY bench/train_step.py "${SIZE[@]}" --device "$DEVICE" --out "$OUT/train_step.json"
step fisher 90 $PY bench/fisher.py "${FSIZE[@]}" --device "$DEVICE" --out "$OUT/fisher.json"
if [ -s "$OUT/train_step.json" ] && [ -s "$OUT/fisher.json" ]; then
  # the paper run priced, and its SLURM time limits asked, from the numbers just measured
  shape=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["shapes"][-1])' "$OUT/train_step.json")
  overlay=$(mktemp --suffix=.yaml)
  printf 'resources: {throughput: %s, fisher_throughput: %s, shape: %s}\n' \
    "$OUT/train_step.json" "$OUT/fisher.json" "$shape" > "$overlay"
  step estimate 60 $PY -m lnpeft.cli estimate --json --configfile config.yaml --configfile "$overlay"
  mv "$OUT/estimate.log" "$OUT/estimate.json"  # at most 8 files come back from the machine
fi
cat "$OUT/status.txt"
! grep -v ' rc=0 ' "$OUT/status.txt" > /dev/null
