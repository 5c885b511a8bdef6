#!/usr/bin/env bash
# Issue 22's GPU calls (docs/PERFORMANCE.md): what travels with each, and what each runs on the GPU machine.
#
#   bash benchmarks/speed_calls.sh stage WHEELS SAGE_GIT_DIR PREV_COMMIT   # here, in the checkout that travels
#   bash benchmarks/speed_calls.sh a    # GPU machine, call 1 (carry .bench/call1): no FA4            ~8.5 min
#   bash benchmarks/speed_calls.sh b    # GPU machine, call 2 (carry .bench/call2): FA4 + sage2       ~8.5 min
#   bash benchmarks/speed_calls.sh c    # GPU machine, call 3 (carry .bench/call1): fp16/bf16, sage2 eager  ~6 min
#
# stage: WHEELS is scripts/fa4_wheels.sh's packed folder (the CUTLASS DSL runtime as xz parts of <= 32 MiB, the
# small wheels), SAGE_GIT_DIR a clone of github:thu-ml/SageAttention (scripts/sage2_build.sh pack), PREV_COMMIT the
# commit whose code is "the previous path" (main before this change). Both folders carry that commit's ursa_core/
# and SageAttention's source; .bench/call1 carries FA4's part-aa (~33 MiB in all), .bench/call2 the other parts and
# wheels (~40 MiB). Each call's results land in $OUT: bench_speed_<call>.json, its log, the CUDA tests' summary.
# Call 1 leaves part-aa in /tmp/fa4 and SageAttention built in /tmp/sage2 for call 2 (a warm machine keeps both;
# on a fresh one call 2 rebuilds sage2 and runs without FA4, and says so).
set -uo pipefail
OUT=${OUT:-/tmp/out}
LIMIT_S=${LIMIT_S:-530}   # the whole call, under the device's 600 s per command

usage() { sed -n '2,7p' "$0" >&2; exit 2; }

stage() {
  local wheels=$1 sage_git=$2 prev=$3 call f
  [ -d "$wheels" ] || { echo "no folder $wheels" >&2; exit 2; }
  git rev-parse --verify -q "$prev^{commit}" >/dev/null || { echo "no commit $prev" >&2; exit 2; }
  rm -rf .bench/call1 .bench/call2
  for call in call1 call2; do
    mkdir -p ".bench/$call/prev" && git archive "$prev" ursa_core | tar -x -C ".bench/$call/prev" || exit 1
    bash scripts/sage2_build.sh pack ".bench/$call/sage2" "$sage_git" || exit 1
  done
  cp "$wheels"/*.part-aa .bench/call1/ || exit 1
  for f in "$wheels"/*.part-* "$wheels"/*.whl; do
    case $(basename "$f") in *.part-aa|sageattention-*) ;; *) cp "$f" .bench/call2/ ;; esac
  done
  du -sh .bench/call1 .bench/call2
}

left() { echo $(( LIMIT_S - SECONDS )); }  # seconds left of the call

sage2_build() {  # SOURCE_DIR: build and install SageAttention's SM90 modules into /tmp/sage2 in the background
  rm -f /tmp/sage2.done
  ( timeout 420 nice -n 10 bash scripts/sage2_build.sh build "$1" && bash scripts/sage2_build.sh install "$1" /tmp/sage2
    echo $? > /tmp/sage2.done ) > "$OUT/sage2_build.log" 2>&1 &
}

cuda_tests() {  # LOG SECONDS [pytest args]: the CUDA tests, at most SECONDS (and never past the call's limit)
  local log=$1 budget=$2
  shift 2
  [ "$budget" -le $(( $(left) - 5 )) ] || budget=$(( $(left) - 5 ))
  if [ "$budget" -lt 30 ]; then echo "CUDA tests skipped: ${budget} s left" | tee "$log"; return; fi
  timeout "$budget" python3 -m pytest -q -rfEs -p no:cacheprovider "$@" > "$log" 2>&1
  echo "exit $? ($budget s allowed)" >> "$log"
  tail -6 "$log"
}

bench() {  # CALL EXTRA...: the benchmark in what is left of the call, 40 s kept for what follows it
  local call=$1
  shift
  timeout $(( $(left) - 25 )) python3 benchmarks/bench_speed.py --call "$call" --out-dir "$OUT" \
    --budget-s $(( $(left) - 45 )) "$@" 2>&1 | tee "$OUT/call_$call.log"
}

gpu() {
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu.txt"
}

a() {
  local c=.bench/call1
  mkdir -p "$OUT" /tmp/fa4 && cp $c/*.part-aa /tmp/fa4/
  sage2_build "$c/sage2"
  gpu
  cuda_tests "$OUT/cuda_tests_a.txt" 150 tests/test_cuda.py   # every CUDA path first: the new ones and the old
  bench a --prev "$c/prev"
  wait
  echo "sage2 build: $(cat /tmp/sage2.done 2>/dev/null || echo unfinished)"; tail -3 "$OUT/sage2_build.log"
}

b() {
  local c=.bench/call2 site=""
  mkdir -p "$OUT" /tmp/fa4 && cp $c/*.part-* $c/*.whl /tmp/fa4/
  ls /tmp/fa4/*.part-aa >/dev/null 2>&1 || cp .bench/call1/*.part-aa /tmp/fa4/ 2>/dev/null
  if ls /tmp/fa4/*.part-aa >/dev/null 2>&1 \
      && bash scripts/fa4_wheels.sh install /tmp/fa4 /tmp/site > "$OUT/fa4_install.log" 2>&1; then
    site=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
  else
    echo "FA4 NOT installed (part-aa missing: call 1's machine was not kept, or the install failed)" \
      | tee -a "$OUT/fa4_install.log"
  fi
  if [ "$(cat /tmp/sage2.done 2>/dev/null)" != 0 ] || ! ls /tmp/sage2/sageattention/_qattn_sm90*.so >/dev/null 2>&1
  then
    sage2_build "$c/sage2"
  fi
  export PYTHONPATH=/tmp/sage2${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}
  gpu
  bench b --prev "$c/prev" --wait-for /tmp/sage2.done
  cuda_tests "$OUT/cuda_tests_b.txt" 60 tests/test_cuda.py -k "flash4 or sage or graph or auto"
  wait
}

c() {  # call 3 (carry .bench/call1): sage2 again with its steps eager, fp16 vs bf16 (issue 16), the CUDA tests
  local c=.bench/call1
  mkdir -p "$OUT"
  sage2_build "$c/sage2"
  export PYTHONPATH=/tmp/sage2${PYTHONPATH:+:$PYTHONPATH}   # the build installs there (imported once it is done)
  gpu
  LIMIT_S=$(( SECONDS + 170 )) bench c --wait-for /tmp/sage2.done
  timeout $(( $(left) - 10 )) python3 benchmarks/bench_dtype.py --errors-only --out "$OUT/dtype.json" \
    > "$OUT/dtype.log" 2>&1
  tail -1 "$OUT/dtype.log" | cut -c1-600
  cuda_tests "$OUT/cuda_tests_c.txt" 60 tests/test_cuda.py -k "fused_kernels_match or graph or sage2"
  wait
}

export PYTHONUNBUFFERED=1
case "${1:-}" in
  stage) [ $# -eq 4 ] || usage; stage "$2" "$3" "$4" ;;
  a) a ;;
  b) b ;;
  c) c ;;
  *) usage ;;
esac
