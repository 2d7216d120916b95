#!/usr/bin/env bash
# Fails when a C source or header does not follow .clang-format (run by ctest as lint.clang_format).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "clang-format not installed"; exit 77; }
bad=0
while IFS= read -r -d '' f; do
  if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
    echo "not formatted: $f (run clang-format -i $f)"
    bad=1
  fi
done < <(find librelay relay-server examples tests bench fuzz -name '*.[ch]' -print0)
exit $bad
