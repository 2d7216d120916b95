#!/usr/bin/env bash
# Runs end-to-end tests with every relay-server under valgrind memcheck, then fails if any server
# lost memory for certain ("definitely lost") or made a memory error. Not part of CI (half an hour
# on two cores); the last recorded result is in docs/testing.md#valgrind.
#
#   scripts/valgrind-e2e.sh [test names]     default: every e2e file that runs relay-server
#
# Needs a RelWithDebInfo build in build/ (cmake -S . -B build && cmake --build build), valgrind
# (scripts/deps.sh --valgrind), and the services the tests use (RELAY_TEST_PG_URL,
# RELAY_TEST_REDIS_URL; without them those classes skip). Servers run with 128 workers
# (RELAY_TEST_WORKER_THREADS) instead of 2,500, and the harness waits longer for them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD_DIR:-build}
TESTS=("$@")
# Default: every e2e file but three. The fake upstream's own test and the install test (which
# builds and runs embedders of librelay) do not run relay-server as a server; the deploy test
# runs deploy.sh, which starts the server with its default 2,500 workers (past valgrind's thread
# limit, and slower to start than deploy.sh waits) and reads the binary's libraries with ldd,
# which sees this wrapper instead: its serve/migrate paths are the ones every other file drives.
if ((${#TESTS[@]} == 0)); then
  for f in tests/e2e/test_*.py; do
    t=$(basename "$f" .py)
    [[ $t == test_fake_upstream || $t == test_install || $t == test_deploy ]] || TESTS+=("$t")
  done
fi
REAL=$ROOT/$BUILD/relay-server/relay-server
[[ -x "$REAL" ]] || { echo "build relay-server in $BUILD/ first"; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind missing: scripts/deps.sh --valgrind"; exit 2; }
OUT=${VALGRIND_OUT:-$ROOT/$BUILD/valgrind}
rm -rf "$OUT" && mkdir -p "$OUT"
# A copy: a rebuild during the run (it is long) must not change the binary under test midway.
cp "$REAL" "$OUT/relay-server.bin"
REAL=$OUT/relay-server.bin
cat >"$OUT/relay-server" <<WRAP
#!/bin/sh
exec valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \\
  --errors-for-leak-kinds=definite --num-callers=30 --max-threads=1000 \\
  --log-file="$OUT/vg.%p.log" "$REAL" "\$@"
WRAP
chmod +x "$OUT/relay-server"
# 128 workers: the shutdown tests hold 100 streams at once.
export RELAY_TEST_WORKER_THREADS=128 RELAY_TEST_HEALTH_TIMEOUT=180 RELAY_TEST_STOP_TIMEOUT=120
# The files run directly: ctest would set RELAY_SERVER_BIN back to the real binary.
failed=()
for t in "${TESTS[@]}"; do
  t=${t#e2e.}
  start=$(date +%s)
  if RELAY_SERVER_BIN="$OUT/relay-server" RELAY_SOURCE_DIR="$ROOT" RELAY_BUILD_DIR="$ROOT/$BUILD" \
    PYTHONPATH="$ROOT/tests" \
    /usr/bin/python3 -u "tests/e2e/$t.py" >"$OUT/$t.log" 2>&1; then
    echo "$t: passed ($(($(date +%s) - start)) s)"
  else
    rc=$?
    [[ $rc -eq 77 ]] && { echo "$t: skipped"; continue; }
    echo "$t: FAILED (exit $rc, $(($(date +%s) - start)) s; $OUT/$t.log)"
    failed+=("$t")
  fi
done
tests_rc=${#failed[@]}
# One log per relay-server process (plus the short "migrate"/"keys" runs).
servers=0 leaky=0 errors=0
for f in "$OUT"/vg.*.log; do
  [[ -e "$f" ]] || continue
  servers=$((servers + 1))
  lost=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$f" | tr -d , | tail -1)
  errs=$(sed -n 's/.*ERROR SUMMARY: \([0-9,]*\) errors.*/\1/p' "$f" | tr -d , | tail -1)
  if [[ -n "$lost" && "$lost" != 0 ]]; then leaky=$((leaky + 1)); echo "definitely lost $lost bytes: $f"; fi
  if [[ -n "$errs" && "$errs" != 0 ]]; then errors=$((errors + 1)); echo "$errs errors: $f"; fi
  if ! grep -q "ERROR SUMMARY" "$f"; then echo "no summary (killed before exit?): $f"; fi
done
echo "valgrind: $servers processes, $leaky with definite leaks, $errors with errors;" \
  "$tests_rc test file(s) failed under valgrind's slowness: ${failed[*]:-none}"
echo "logs: $OUT"
[[ $leaky -eq 0 && $errors -eq 0 ]]
