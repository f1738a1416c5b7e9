#!/usr/bin/env bash
# Runs every test. Installs what the tests need and the Rust toolchain does not
# bring: redis-server (the shared rate-limit tests start private instances on
# loopback) and promtool (Debian's prometheus package; the /metrics test checks
# the exposition with it). apt-get is used only when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (needed by the tests)" >&2
  SUDO=""
  [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

exec cargo test --workspace "$@"
