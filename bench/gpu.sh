#!/usr/bin/env bash
# GPU table: keras_effv2 vs keras.applications (and timm on torch), B0 and S, forward and train
# step, float32 and mixed precision, on every backend that imports. Writes $OUT/gpu_<backend>.json,
# $OUT/gpu_<backend>.md, $OUT/gpu.md (all tables) and $OUT/packages.txt.
# Budget: ~8 minutes in all; each backend runs under `timeout` and each case stops timing after
# CASE_TIMEOUT seconds; results are written after every case, so a killed run keeps what it did.
#
#   OUT=/tmp/gpu bash bench/gpu.sh            # the GPU run (run from the repository root)
#   QUICK=1 OUT=/tmp/gpu bash bench/gpu.sh    # smoke test: 64 px, batch 2, 1 round (CPU ok)
#   BACKENDS="torch jax" ... picks backends; PER_BACKEND / CASE_TIMEOUT set the time guards;
#   CASES, PRECISIONS, REPEATS, ITERS pick a part of the table (defaults: all of it).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
PER_BACKEND=${PER_BACKEND:-140}
CASE_TIMEOUT=${CASE_TIMEOUT:-15}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=3 TF_FORCE_GPU_ALLOW_GROWTH=true XLA_PYTHON_CLIENT_PREALLOCATE=false
export MALLOC_TRIM_THRESHOLD_=17179869184
ARGS=(--cases "${CASES:-b0_fwd,s_fwd,b0_train,s_train}" --precision "${PRECISIONS:-float32,mixed}"
      --repeats "${REPEATS:-5}" --iters "${ITERS:-1}" --warmup 2 --case-timeout "$CASE_TIMEOUT")
if [ "${QUICK:-0}" = 1 ]; then ARGS=(--cases b0_fwd,b0_train --precision float32,mixed --quick); fi

{ $PY -m pip list 2>/dev/null | grep -i -E "keras|tensorflow|jax|torch|timm"; } | tee "$OUT/packages.txt"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
  || echo "no nvidia-smi"; } | tee "$OUT/device.txt"

probe() {  # does this backend import and see its accelerator?
  case "$1" in
    torch) timeout 60 $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" ;;
    tensorflow) timeout 60 $PY -c "import tensorflow as tf; print('tf', tf.__version__, tf.config.list_physical_devices('GPU'))" ;;
    jax) timeout 60 $PY -c "import jax; print('jax', jax.__version__, jax.devices())" ;;
  esac
}

: > "$OUT/gpu.md"
for b in ${BACKENDS:-torch tensorflow jax}; do
  echo "=== $b"
  if ! seen=$(probe "$b" 2>&1); then
    echo "$b: does not import here, skipped" | tee -a "$OUT/gpu.md"; continue
  fi
  echo "$seen" | tail -1 | tee -a "$OUT/device.txt"
  KERAS_BACKEND=$b timeout -k 10 "$PER_BACKEND" $PY -m bench "${ARGS[@]}" \
    --json "$OUT/gpu_$b.json" --markdown "$OUT/gpu_$b.md" > "$OUT/gpu_$b.log" 2>&1
  rc=$?
  tail -25 "$OUT/gpu_$b.log"
  [ $rc -ne 0 ] && echo "$b: exit $rc (124 = time guard; partial table kept)" | tee -a "$OUT/gpu.md"
  [ -f "$OUT/gpu_$b.md" ] && cat "$OUT/gpu_$b.md" >> "$OUT/gpu.md"
done
echo "=== all tables: $OUT/gpu.md"
cat "$OUT/gpu.md"
