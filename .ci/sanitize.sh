#!/usr/bin/env bash
# Build shapcam._C with AddressSanitizer + UBSan (separate build folder, CUDA off) and run the
# tests that drive the native engine through it: ops, estimator, reference twin, exact oracle, the
# binding fuzzing, the hostile-input cases, the incremental walk and the regression sampler's ops. Any heap overflow, use-after-free or undefined
# behaviour aborts the run. Usage: .ci/sanitize.sh PYTHON
set -euo pipefail
PY=${1:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"
SHAPCAM_SANITIZE=1 SHAPCAM_CUDA=0 "$PY" setup.py -q build_ext --build-lib "$WORK/lib" \
    --build-temp "$WORK/tmp" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
# The package from the checkout, with the sanitized extension beside it.
cp -r shapcam "$WORK/lib/"
cp "$WORK"/lib/shapcam/_C*.so "$WORK/lib/shapcam/" 2>/dev/null || true
ls "$WORK"/lib/shapcam/_C*.so >/dev/null
CXX=${CXX:-c++}
export LD_PRELOAD="$($CXX -print-file-name=libasan.so) $($CXX -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONPATH="$WORK/lib"
cd "$WORK"
"$PY" -c "import shapcam; i = shapcam.engine_info(); assert i['native'], i; print('sanitized engine:', shapcam.__file__)"
"$PY" -m pytest -q -p no:cacheprovider -c "$ROOT/pytest.ini" --rootdir "$ROOT" \
    "$ROOT/tests/test_ops.py" "$ROOT/tests/test_reference.py" "$ROOT/tests/test_estimator.py" \
    "$ROOT/tests/test_exact.py" "$ROOT/tests/test_binding_fuzz.py" \
    "$ROOT/tests/test_hardening.py" "$ROOT/tests/test_incremental.py" \
    -k "not cli and not evaluate and not half and not thread and not incremental_equals_fused"
# the regression sampler's native ops (draws, 8 at a time and one at a time; fit statistics, moments)
# against their twins
"$PY" -m pytest -q -p no:cacheprovider -c "$ROOT/pytest.ini" --rootdir "$ROOT" \
    "$ROOT/tests/test_regression.py" \
    -k "contract or tail or finish or enumerated_terms or twins or past_a_word or past_the or bit_identical or fit_cache or efficiency or pair_draws or stay_in"
