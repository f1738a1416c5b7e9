#!/usr/bin/env bash
# Long-lived, gRPC and L4 load on this machine, in one run:
#
#   websocket: N idle WebSocket connections held through Switchyard to an echo
#              server; reports Switchyard's RSS before, while holding, and per
#              connection, and its open file descriptors.
#   tcp:       bulk TCP throughput (MB/s) direct, through HAProxy in `mode tcp`
#              and through a Switchyard `tcp` listener, interleaved over ROUNDS;
#              prints medians and Switchyard's ratio to HAProxy.
#   grpc:      unary gRPC calls per second with h2load (16 connections, 16
#              streams each) direct, through nginx `grpc_pass` and through
#              Switchyard, interleaved over ROUNDS; medians and the ratio to nginx.
#
#   bench/realtime.sh                          # all three
#   SCENARIOS=tcp ROUNDS=5 bench/realtime.sh
#   N=9900 IDLE=20 SCENARIOS=websocket bench/realtime.sh
#
# Env: SCENARIOS (default "websocket tcp grpc"), CALLS (gRPC calls per run, default 200000), N (WebSocket connections, default
#      9900: each costs the gateway two file descriptors and the machine allows
#      20000 per process), IDLE (seconds held, default 10), ROUNDS (default 3),
#      CONNS (tcp connections, default 4), MIB (MiB per tcp connection, default
#      1024), WORKERS (Switchyard worker threads and HAProxy threads, default 1).
# Ports: switchyard 18090 (ws), 18091 (tcp), 18093 (grpc); haproxy 18092;
# nginx 18094 (grpc). Loopback only.
set -u
cd "$(dirname "$0")/.."
SCENARIOS=${SCENARIOS:-"websocket tcp grpc"}
N=${N:-9900}; IDLE=${IDLE:-10}; ROUNDS=${ROUNDS:-3}; CONNS=${CONNS:-4}; MIB=${MIB:-1024}; WORKERS=${WORKERS:-1}

need=0
for t in haproxy nginx h2load python3; do command -v $t >/dev/null || need=1; done
if [ $need = 1 ]; then
  apt-get update -qq && apt-get install -y -qq haproxy nginx nghttp2-client python3 >/dev/null \
    || { echo "could not install haproxy/nginx/h2load" >&2; exit 1; }
fi
CALLS=${CALLS:-200000}
cargo build --release -p switchyard --examples --bin switchyard >&2 || exit 1
BIN=target/release

. bench/lib.sh
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
  maxconn 4096
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

if [[ " $SCENARIOS " == *" grpc "* ]]; then
  $BIN/examples/grpc_echo >"$D/grpc.addr" & PIDS+=($!)
  wait_line "$D/grpc.addr"
  UP=$(cat "$D/grpc.addr")
  # One gRPC frame: uncompressed, 7 bytes, Echo { message: "hello" }.
  printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$D/call.bin"
  cat >"$D/grpc.toml" <<EOF
[runtime]
workers = $WORKERS
[access_log]
enabled = false
[[listeners]]
name = "grpc"
listen = "127.0.0.1:18093"
[[clusters]]
name = "echo"
protocol = "http2"
endpoints = [{ address = "$UP" }]
[[routes]]
name = "echo"
cluster = "echo"
EOF
  mkdir -p "$D/nginx"
  cat >"$D/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $D/nginx/nginx.pid;
error_log $D/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $D/nginx; proxy_temp_path $D/nginx; fastcgi_temp_path $D/nginx;
  uwsgi_temp_path $D/nginx; scgi_temp_path $D/nginx;
  keepalive_requests 1000000;
  upstream echo { server $UP; keepalive 32; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:18094 http2;
    location / { grpc_pass grpc://echo; }
  }
}
EOF
  $BIN/switchyard run --config "$D/grpc.toml" 2>"$D/grpc.log" & PIDS+=($!)
  nginx -c "$D/nginx.conf" -g 'daemon off;' & PIDS+=($!)
  wait_port 18093; wait_port 18094
  printf 'round\ttarget\tcalls/s\n'
  for r in $(seq 1 "$ROUNDS"); do
    for target in direct:$UP nginx:127.0.0.1:18094 switchyard:127.0.0.1:18093; do
      name=${target%%:*}; addr=${target#*:}
      out=$(h2load -n "$CALLS" -c 16 -m 16 -d "$D/call.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://$addr/test.Echo/Unary" 2>&1)
      rps=$(echo "$out" | awk '/^finished in/ {print $4}')
      ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
      printf '%s\t%s\t%s\t%s 2xx\n' "$r" "$name" "${rps:-failed}" "${ok:-0}" | tee -a "$D/grpc.tsv"
    done
  done
  python3 - "$D/grpc.tsv" <<'EOF'
import sys, statistics
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1])]
med = {}
for name in ('direct', 'nginx', 'switchyard'):
    vals = [float(r[2]) for r in rows if r[1] == name and r[2] != 'failed']
    med[name] = statistics.median(vals) if vals else float('nan')
print('grpc medians (calls/s): ' + ', '.join(f'{k} {v:.0f}' for k, v in med.items()))
print(f"switchyard / nginx: {med['switchyard'] / med['nginx']:.2f}x")
EOF
fi
