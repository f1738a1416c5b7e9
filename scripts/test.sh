#!/usr/bin/env bash
# Runs every test. Installs what the tests need and the Rust toolchain does not
# bring: redis-server (the shared rate-limit tests start private instances on
# loopback). apt-get is used only when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server (needed by the global rate-limit tests)" >&2
  SUDO=""
  [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq redis-server >/dev/null
fi

exec cargo test --workspace "$@"
