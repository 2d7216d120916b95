#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a running relay: installs the packages, builds, and
# starts relay-server on 127.0.0.1:8000 with the embedded SQLite database in ./data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DRELAY_BUILD_TESTS=OFF >&2
cmake --build build -j"$(nproc)" --target relay-server >&2
exec ./build/relay-server/relay-server serve "$@"
