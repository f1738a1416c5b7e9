# Shared by the bench scripts (sourced from the repository root): a scratch
# directory $D, the pids of what the script starts in PIDS (stopped on exit,
# by pid, and only those), and small waits.
D=$(mktemp -d); PIDS=()
cleanup() { # stop only what this script started, by pid
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null; done
  rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Waits (at most 20 s) until something listens on loopback port $1.
wait_port() { for i in $(seq 1 400); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }
# Waits (at most 10 s) until file $1 is not empty.
wait_line() { for i in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.05; done; return 1; }
# The median of the numbers on standard input, one a line.
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Installs wrk when missing (apt-get) and builds Switchyard and its examples
# in release; sets BIN to where they are.
release_with_wrk() {
  command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; } \
    || { echo "could not install wrk" >&2; exit 1; }
  cargo build --release -p switchyard --examples --bin switchyard >&2 || exit 1
  BIN=$PWD/target/release
}
