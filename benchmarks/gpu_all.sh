#!/usr/bin/env bash
# Every GPU benchmark in one call (~8 minutes on one H200): bfloat16 and float32 step times with MFU, linear probe,
# autoencoder, end to end, batch scaling and the bridge. Results: benchmarks/results/gpu_*.json, then the markdown.
# Needs jax with CUDA and torch with CUDA in $PYTHON (default .venv/bin/python). Each part has its own time limit, so
# one slow or failing part does not eat the others' time; the exit status is non-zero if any part failed.
#
#
# Usage: gpu_all.sh [--dry-run] [--only PART...]   PARTS: train_steps_bf16 train_steps_fp32 scaling end_to_end bridge
#                                                   data_pipeline
# --dry-run: the parts with the same options but on the CPU at their --smoke size (a few minutes on 2 cores; results
# in $BENCH_OUT, default a new temporary directory), so a typo fails there and not on the first GPU run.
# --only: just these parts (e.g. to re-run one that failed).
set -u
cd "$(dirname "$0")/.."
PARTS="train_steps_bf16 train_steps_fp32 scaling end_to_end bridge data_pipeline"
DRY_RUN=0
ONLY=""
usage() { echo "usage: $0 [--dry-run] [--only PART...]; PARTS: $PARTS" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --only) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do ONLY="$ONLY $1"; shift; done; continue ;;
    *) usage ;;
  esac
  shift
done
for part in $ONLY; do case " $PARTS " in *" $part "*) ;; *) echo "unknown part: $part" >&2; usage ;; esac; done
PY=${PYTHON:-.venv/bin/python}
DEV=gpu
SMOKE=()
if [ "$DRY_RUN" = 1 ]; then
  DEV=cpu
  SMOKE=(--smoke)
  OUT=${BENCH_OUT:-$(mktemp -d)}
else
  OUT=${BENCH_OUT:-benchmarks/results}
fi
PEAK=${PEAK_TFLOPS:-}            # e.g. 989 for H200 bfloat16 dense; default: the table in train_steps.py
mkdir -p "$OUT"
peak_arg=()
[ -n "$PEAK" ] && peak_arg=(--peak-tflops "$PEAK")
status=0
run() {  # run LIMIT_S NAME ARGS...
  local limit=$1 name=$2; shift 2
  if [ -n "$ONLY" ] && [ "${ONLY/ ${name// /_}/}" = "$ONLY" ]; then return 0; fi
  echo "=== $name (limit ${limit}s) ==="
  local t0=$SECONDS
  timeout -k 10 "$limit" "$PY" -m "$@" "${SMOKE[@]}" || { echo "!!! $name failed or timed out (rc $?)"; status=1; }
  echo "=== $name: $((SECONDS - t0))s ==="
}
DRY_RUN=$DRY_RUN "$PY" - <<'PY' || exit 1
import os
import jax, torch
print("jax", jax.__version__, jax.devices()); print("torch", torch.__version__)
if os.environ["DRY_RUN"] != "1":
    print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    assert jax.default_backend() == "gpu" and torch.cuda.is_available(), "gpu_all.sh needs CUDA jax and torch"
PY
# --in-process: a fresh process per case would spend this part's time limit on CUDA start-ups.
run 150 "train_steps bf16" benchmarks.train_steps --device "$DEV" --dtype bfloat16 --image-size 224 --batch-size 256 \
  --repeats 10 --threads 8 --in-process --out "$OUT/gpu_train_steps_bf16.json" "${peak_arg[@]}"
run 100 "train_steps fp32" benchmarks.train_steps --device "$DEV" --dtype float32 --image-size 224 --batch-size 128 \
  --modes full frozen inference --repeats 10 --threads 8 --in-process --out "$OUT/gpu_train_steps_fp32.json" \
  "${peak_arg[@]}"
run 90 "scaling" benchmarks.scaling --device "$DEV" --dtype bfloat16 --arch resnet50 --image-size 224 --devices 1 \
  --base-batch 256 --batch-sizes 64 256 --repeats 10 --out "$OUT/gpu_scaling.json"
# --no-warm-cache: the re-run row starts two more processes, too long for this part's limit.
run 90 "end_to_end" benchmarks.end_to_end --device "$DEV" --dtype bfloat16 --examples 4096 --image-size 224 \
  --batch-size 256 --epochs 5 --threads 8 --no-warm-cache --out "$OUT/gpu_end_to_end.json"
run 60 "bridge" benchmarks.bridge --device "$DEV" --archs resnet18 resnet50 resnext50_32x4d --image-size 64 \
  --out "$OUT/gpu_bridge.json"
# The input pipeline with the machine's cores as grain workers, then (--feed) feeding the ResNet50 bf16 train step
# on the GPU, against the same step on a batch already there: says whether data or compute limits training here.
run 240 "data_pipeline" benchmarks.data_pipeline --workers 8 15 --images 2000 --epochs 2 --repeats 1 \
  --batch-size 128 --feed resnet50 --feed-dtype bfloat16 --device "$DEV" --out "$OUT/gpu_data_pipeline.json"
"$PY" -m benchmarks.report --results "$OUT"
exit $status
