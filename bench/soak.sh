#!/bin/sh
# soak.sh: a bounded mixed load (streams, non-streaming, client disconnects, 529s) through
# relay-server for 10 minutes by default, sampling its RSS and open file descriptors every 10 s;
# fails (exit 1) on more than 5 % growth after the warm-up. The load and the sampling are in
# bench/soak.py (standard-library Python, beside the tests' fake upstream); see its header for the
# options. Not part of the test suite: run it by hand and record the result in docs/benchmarks.md.
#   bench/soak.sh [--duration 600] [--warmup 120] [--interval 10] [--clients 8] [--build build]
set -eu
exec /usr/bin/python3 "$(dirname "$0")/soak.py" "$@"
