#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) and runs each for FUZZ_SECONDS (default 20)
# from its seed corpus in fuzz/corpus/<target>/. New inputs go to a temporary directory, never
# into the repository. Fails on the first crash, leak or timeout (the reproducer is kept in
# $FUZZ_ARTIFACTS, default build-fuzz/artifacts). Longer runs: FUZZ_SECONDS=600 scripts/fuzz-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-20}
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
ARTIFACTS=${FUZZ_ARTIFACTS:-$BUILD/artifacts}
cmake -S . -B "$BUILD" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DRELAY_BUILD_FUZZ=ON -DRELAY_BUILD_TESTS=OFF -DRELAY_BUILD_BENCH=OFF \
  -DRELAY_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$BUILD" -j"$(nproc)"
mkdir -p "$ARTIFACTS"
TMP=$(mktemp -d /tmp/relay-fuzz.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
for bin in "$BUILD"/fuzz/fuzz_*; do
  [[ -x "$bin" && -f "$bin" ]] || continue
  name=$(basename "$bin")
  seeds=fuzz/corpus/$name
  [[ -d "$seeds" ]] || { echo "no seed corpus $seeds"; exit 1; }
  mkdir -p "$TMP/$name"
  echo "== $name: ${SECONDS_EACH}s from $(find "$seeds" -type f | wc -l) seeds =="
  rc=0
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$bin" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$ARTIFACTS/$name-" "$TMP/$name" "$seeds" \
    >"$TMP/$name.log" 2>&1 || rc=$?
  grep -E "^stat::(number_of_executed_units|new_units_added)" "$TMP/$name.log" || true
  if [[ $rc -ne 0 ]]; then
    grep -E -A12 "ERROR|runtime error" "$TMP/$name.log" | head -40
    echo "$name failed (exit $rc): reproducer in $ARTIFACTS"
    exit 1
  fi
done
