#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a running relay: installs the packages, builds, and
# starts relay-server on 127.0.0.1:8000 with the embedded SQLite database in ./data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bin=$(bash scripts/build.sh build)
exec "./$bin" serve "$@"
