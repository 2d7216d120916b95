#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what it needs, builds, starts a
# throwaway PostgreSQL and Redis on 127.0.0.1 (free ports, a temporary directory), runs every
# test with ctest, then again under AddressSanitizer + UndefinedBehaviorSanitizer, and stops the
# servers it started. Then the concurrency-heavy tests under ThreadSanitizer and a short run of
# every fuzz target (scripts/fuzz-smoke.sh). RELAY_SKIP_SANITIZE=1 skips the sanitizer passes
# (ASan and TSan), RELAY_SKIP_FUZZ=1 the fuzz runs; FUZZ_SECONDS sets each target's run (20).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

bash scripts/deps.sh --test

TMP=$(mktemp -d /tmp/relay-test.XXXXXX)
chmod 755 "$TMP"
REDIS_PID=""
cleanup() {
  set +e
  if [[ -n "$REDIS_PID" ]]; then kill "$REDIS_PID" 2>/dev/null; wait "$REDIS_PID" 2>/dev/null; fi
  bash "$ROOT/scripts/pg-test-server.sh" stop "$TMP/pg" >/dev/null 2>&1
  rm -rf "$TMP"
}
trap cleanup EXIT

# PostgreSQL (refuses to run as root: the script runs it as the postgres user).
export RELAY_TEST_PG_DIR="$TMP/pg"
RELAY_TEST_PG_URL=$(bash scripts/pg-test-server.sh start "$RELAY_TEST_PG_DIR" | tail -n 1)
export RELAY_TEST_PG_URL
echo "PostgreSQL: $RELAY_TEST_PG_URL"

# Redis on a free loopback port, no persistence.
REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$TMP" \
  --logfile "$TMP/redis.log" &
REDIS_PID=$!
for _ in $(seq 1 50); do
  if redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then break; fi
  sleep 0.1
done
export RELAY_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
echo "Redis: $RELAY_TEST_REDIS_URL"

run_suite() { # build dir, build type, extra cmake args... ($CTEST_ARGS: which tests, default all)
  local dir=$1 type=$2; shift 2
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="$type" "$@" >/dev/null
  cmake --build "$dir" -j"$(nproc)"
  # shellcheck disable=SC2086
  ctest --test-dir "$dir" --output-on-failure --timeout 900 ${CTEST_ARGS:-}
}

# The optimised build is the one the quick start makes (and -O2 brings warnings -O0 hides).
echo "== tests (optimised build) =="
run_suite build-test RelWithDebInfo
if [[ "${RELAY_SKIP_SANITIZE:-0}" != "1" ]]; then
  echo "== tests (ASan + UBSan build) =="
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_suite build-asan Debug -DRELAY_SANITIZE=address,undefined -DRELAY_BUILD_BENCH=OFF
fi
if [[ "${RELAY_SKIP_SANITIZE:-0}" != "1" ]]; then
  # The suites where threads meet: limits and keys under contention, the bcrypt burst, the
  # login race, and the server under concurrent streams (docs/testing.md#threadsanitizer).
  echo "== concurrency tests (ThreadSanitizer build) =="
  CTEST_ARGS="-R ^(unit\.test_(limits|limits_redis|auth)|(sqlite|pg)\.test_keys|e2e\.test_(concurrency|key_burst))$" \
    TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$ROOT/tests/tsan.supp" \
    RELAY_TEST_WORKER_THREADS=64 RELAY_TEST_HEALTH_TIMEOUT=120 \
    run_suite build-tsan RelWithDebInfo -DRELAY_SANITIZE=thread -DRELAY_BUILD_BENCH=OFF \
    -DRELAY_BUILD_EXAMPLES=OFF
fi
if [[ "${RELAY_SKIP_FUZZ:-0}" != "1" ]]; then
  echo "== fuzz smoke runs (${FUZZ_SECONDS:-20} s each) =="
  bash scripts/fuzz-smoke.sh
fi
