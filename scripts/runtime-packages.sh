#!/usr/bin/env bash
# The Debian packages that own the shared libraries a binary links (what a runtime image must
# install), one a line. Usage: scripts/runtime-packages.sh BINARY. Fails when a library belongs
# to no package (a locally built one would be missing at run time).
set -euo pipefail
bin=${1:?usage: runtime-packages.sh BINARY}
mapfile -t libs < <(ldd "$bin" | awk '/=> \//{print $3}')
# Debian 12 merged /usr: ldd may name /lib/... while dpkg lists /usr/lib/... (or the reverse),
# so each library is looked up under every name it has, in one dpkg call.
names=()
for lib in "${libs[@]}"; do
  real=$(readlink -f "$lib")
  names+=("$lib" "/usr$lib" "$real" "/usr$real")
done
owners=$(dpkg -S "${names[@]}" 2>/dev/null | grep -v '^diversion by' | grep -E '^[^ ].*: /' || true)
paths=$(sed -E 's/^.*: (\/)/\1/' <<<"$owners")
for lib in "${libs[@]}"; do
  real=$(readlink -f "$lib")
  if ! grep -qxF -e "$lib" -e "/usr$lib" -e "$real" -e "/usr$real" <<<"$paths"; then
    echo "runtime-packages.sh: no package owns $lib" >&2
    exit 1
  fi
done
# "pkg:arch: /path" or "pkg1, pkg2: /path": the first owner is enough.
sed -E 's/^([^:, ]+).*/\1/' <<<"$owners" | sort -u
