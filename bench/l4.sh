#!/usr/bin/env bash
# Long-lived and L4 load on this machine, in one run:
#
#   websocket: N idle WebSocket connections held through Switchyard to an echo
#              server; reports Switchyard's RSS before, while holding, and per
#              connection, and its open file descriptors.
#   tcp:       bulk TCP throughput (MB/s) direct, through HAProxy in `mode tcp`
#              and through a Switchyard `tcp` listener, interleaved over ROUNDS;
#              prints medians and Switchyard's ratio to HAProxy.
#
#   bench/l4.sh                          # both
#   SCENARIOS=tcp ROUNDS=5 bench/l4.sh
#   N=9900 IDLE=20 SCENARIOS=websocket bench/l4.sh
#
# Env: SCENARIOS (default "websocket tcp"), N (WebSocket connections, default
#      9900: each costs the gateway two file descriptors and the machine allows
#      20000 per process), IDLE (seconds held, default 10), ROUNDS (default 3),
#      CONNS (tcp connections, default 4), MIB (MiB per tcp connection, default
#      1024), WORKERS (Switchyard worker threads and HAProxy threads, default 1).
# Ports: switchyard 18090 (ws) and 18091 (tcp), haproxy 18092. Loopback only.
set -u
cd "$(dirname "$0")/.."
SCENARIOS=${SCENARIOS:-"websocket tcp"}
N=${N:-9900}; IDLE=${IDLE:-10}; ROUNDS=${ROUNDS:-3}; CONNS=${CONNS:-4}; MIB=${MIB:-1024}; WORKERS=${WORKERS:-1}

command -v haproxy >/dev/null || { apt-get update -qq && apt-get install -y -qq haproxy >/dev/null; } \
  || { echo "could not install haproxy" >&2; exit 1; }
cargo build --release -p switchyard --examples --bin switchyard >&2 || exit 1
BIN=target/release

D=$(mktemp -d); PIDS=()
cleanup() { # stop only what this script started, by pid
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null; done
  rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_port() { for i in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }
wait_line() { for i in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.05; done; return 1; }
kib() { awk -v k="$2" '$1==k":"{print $2}' /proc/$1/status; }

if [[ " $SCENARIOS " == *" websocket "* ]]; then
  $BIN/examples/ws_idle serve >"$D/echo.addr" & PIDS+=($!)
  wait_line "$D/echo.addr"
  cat >"$D/ws.toml" <<EOF
[runtime]
workers = $WORKERS
[access_log]
enabled = false
[[listeners]]
name = "ws"
listen = "127.0.0.1:18090"
[[clusters]]
name = "echo"
endpoints = [{ address = "$(cat "$D/echo.addr")" }]
[[routes]]
name = "ws"
cluster = "echo"
websocket = { idle_timeout = "1h" }
EOF
  $BIN/switchyard run --config "$D/ws.toml" 2>"$D/ws.log" & SW=$!; PIDS+=($SW)
  wait_port 18090
  sleep 1
  before=$(kib $SW VmRSS)
  $BIN/examples/ws_idle hold 127.0.0.1:18090 "$N" "$IDLE" >"$D/hold.log" 2>&1 & HOLD=$!
  for i in $(seq 1 1200); do grep -q holding "$D/hold.log" && break; kill -0 $HOLD 2>/dev/null || break; sleep 0.1; done
  sleep 2
  held=$(kib $SW VmRSS); fds=$(ls /proc/$SW/fd | wc -l)
  wait $HOLD; status=$?
  peak=$(kib $SW VmHWM)
  cat "$D/hold.log"
  echo "websocket: $N idle connections; Switchyard RSS ${before} KiB before, ${held} KiB holding ($(( (held - before) * 1024 / N )) bytes per connection), peak ${peak} KiB, ${fds} fds; client exit ${status}"
fi

if [[ " $SCENARIOS " == *" tcp "* ]]; then
  $BIN/examples/tcp_load source >"$D/source.addr" & PIDS+=($!)
  wait_line "$D/source.addr"
  SRC=$(cat "$D/source.addr")
  cat >"$D/tcp.toml" <<EOF
[runtime]
workers = $WORKERS
[access_log]
enabled = false
[[listeners]]
name = "tcp"
listen = "127.0.0.1:18091"
protocol = "tcp"
cluster = "source"
[[clusters]]
name = "source"
endpoints = [{ address = "$SRC" }]
EOF
  cat >"$D/haproxy.cfg" <<EOF
global
  nbthread $WORKERS
  maxconn 10000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen tcp
  bind 127.0.0.1:18092
  server s1 $SRC
EOF
  $BIN/switchyard run --config "$D/tcp.toml" 2>"$D/tcp.log" & PIDS+=($!)
  haproxy -f "$D/haproxy.cfg" -db >"$D/haproxy.log" 2>&1 & PIDS+=($!)
  wait_port 18091; wait_port 18092
  printf 'round\ttarget\tMB/s\n'
  for r in $(seq 1 "$ROUNDS"); do
    for target in direct:$SRC haproxy:127.0.0.1:18092 switchyard:127.0.0.1:18091; do
      name=${target%%:*}; addr=${target#*:}
      mbps=$($BIN/examples/tcp_load sink "$addr" "$CONNS" "$MIB") || mbps=failed
      printf '%s\t%s\t%s\n' "$r" "$name" "$mbps" | tee -a "$D/tcp.tsv"
    done
  done
  python3 - "$D/tcp.tsv" <<'EOF'
import sys, statistics
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1])]
med = {}
for name in ('direct', 'haproxy', 'switchyard'):
    vals = [float(r[2]) for r in rows if r[1] == name and r[2] != 'failed']
    med[name] = statistics.median(vals) if vals else float('nan')
print('tcp medians (MB/s): ' + ', '.join(f'{k} {v:.0f}' for k, v in med.items()))
print(f"switchyard / haproxy: {med['switchyard'] / med['haproxy']:.2f}x")
EOF
fi
