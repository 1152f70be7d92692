#!/usr/bin/env bash
# On a GPU machine with nothing but this repository: build shapcam._C with CUDA, run the CUDA
# tests (also under compute-sanitizer memcheck), run the GPU benchmarks, print a table last.
#   bash benchmarks/gpu_check.sh            # full
#   QUICK=1 bash benchmarks/gpu_check.sh    # fewer K values
#   HOST_TESTS=0 ...                         # skip the CPU test suite (it runs in CI)
#   BENCH=samplers ...                       # of the benchmarks, only the samplers' rows
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
echo "== build"
t0=$(date +%s)
SHAPCAM_CUDA=1 SHAPCAM_CUDA_ARCH=${SHAPCAM_CUDA_ARCH:-90} $PY setup.py -q build_ext --inplace --force \
  > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
$PY -c "import shapcam, json; i = shapcam.engine_info(); print(json.dumps(i)); assert i['cuda_available'], i"
echo "== tests"
$PY -m pytest -q -rfE tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" | tail -15
test_rc=${PIPESTATUS[0]}
echo "== sampler tests with games on the GPU"
$PY -m pytest -q -rfE tests/test_regression.py tests/test_api.py tests/test_samplers.py -k "device or cuda or gpu" \
  -p no:cacheprovider 2>&1 | tee "$OUT/test_samplers_gpu.log" | tail -4
[ "${HOST_TESTS:-1}" = 0 ] || $PY -m pytest -q tests -m "not cuda" -p no:cacheprovider 2>&1 | tail -2
echo "== compute-sanitizer memcheck (CUDA tests)"
if command -v compute-sanitizer >/dev/null; then
  timeout ${MEMCHECK_S:-240} compute-sanitizer --tool memcheck --error-exitcode 3 $PY -m pytest -q -x tests/test_cuda.py \
    -k "not stream" -p no:cacheprovider > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$? ($(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/memcheck.log") clean summaries)"
  grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck.log" | tail -3
else
  echo "compute-sanitizer not found"
fi
if [ "${BENCH:-all}" = all ]; then
  echo "== benchmarks"
  $PY benchmarks/gpu_bench.py ${QUICK:+--quick} 2>&1 | tee "$OUT/gpu_bench.log" | tail -20
  echo "== incremental Shap-CAM (ResNet-50, K=1024)"
  $PY benchmarks/gpu_bench.py --incremental 2>&1 | tee "$OUT/gpu_incremental.log" | tail -6
fi
echo "== samplers with games on the GPU (issue 15)"
$PY benchmarks/gpu_bench.py --samplers 2>&1 | tee "$OUT/gpu_samplers.log" | tail -8
echo "== ROAD: batched CG imputation on the GPU against the host's LU"
$PY -m pytest -q -rfE tests/test_road.py -k cuda -p no:cacheprovider 2>&1 | tail -2
$PY benchmarks/gpu_road.py 2>&1 | tee "$OUT/gpu_road.log" | tail -3
echo "cuda tests rc=$test_rc"
