#!/usr/bin/env bash
# Runs every test. Installs what the tests need and the Rust toolchain does not
# bring: redis-server (the shared rate-limit tests start private instances on
# loopback), promtool (Debian's prometheus package; the /metrics test checks
# the exposition with it) and chromium (the dashboard test drives the admin
# page in headless Chromium). apt-get is used only when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (needed by the tests)" >&2
  SUDO=""
  [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

exec cargo test --workspace "$@"
