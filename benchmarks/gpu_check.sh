#!/usr/bin/env bash
# The GPU check in one go, for a short lease on a CUDA machine: the `cuda` tests, training speed
# (R0 / R1 / cnnlab / ceiling), predict latency and the default demo run's time to accuracy.
# Each step is bounded by `timeout` and writes its output under $OUT (default: gpu-results/), so
# what finished is kept even when a later step runs out of time.
#
#   bash benchmarks/gpu_check.sh                      # with the project's venv or any python+torch
#   PYTHON=python3 OUT=/tmp/out bash benchmarks/gpu_check.sh
#
# Needs only the core's imports (torch, torchvision, numpy, pillow, scikit-learn, onnx[runtime],
# pytest): no streamlit, optuna or plotly, so it runs on a bare CUDA box with PYTHONPATH=.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(test -x .venv/bin/python && echo .venv/bin/python || echo python3)}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
export CNNLAB_HOME=${CNNLAB_HOME:-$(mktemp -d)}

step() {  # step NAME SECONDS CMD...: run CMD with a time limit, log to $OUT/NAME.txt
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  echo "   exit $rc after $((SECONDS - t0))s"
  tail -n "${TAIL:-25}" "$OUT/$name.txt"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  "$PYTHON" -c 'import torch, torchvision, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "torchvision", torchvision.__version__, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
  nproc
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step cuda_tests "${CUDA_TESTS_S:-150}" "$PYTHON" -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider
step bench_predict "${PREDICT_S:-60}" "$PYTHON" benchmarks/bench_predict.py --device auto
step bench_train "${TRAIN_S:-360}" "$PYTHON" benchmarks/bench_train.py \
  --repeats "${REPEATS:-2}" --epochs "${EPOCHS:-3}" --json "$OUT/bench_train.json"
echo "results in $OUT"
