#!/usr/bin/env bash
# Binary upgrades under load, in one run: wrk (keep-alive connections) for
# SECS seconds against Switchyard while `switchyard upgrade` replaces the
# process UPGRADES times. The figures are wrk's socket errors (connect, read,
# write, timeout) and non-2xx answers, which should all be 0, beside the
# request rate and latency of the same run.
#
#   bench/upgrade.sh
#   SECS=20 UPGRADES=8 bench/upgrade.sh
#
# Env: SECS (default 12), UPGRADES (default 4), CONNS (wrk, default 32).
# Ports: switchyard 18130, admin 18131. Loopback only.
set -u
cd "$(dirname "$0")/.."
SECS=${SECS:-12}; UPGRADES=${UPGRADES:-4}; CONNS=${CONNS:-32}
. bench/lib.sh
release_with_wrk

$BIN/examples/json_backend upstream >"$D/up.addr" & PIDS+=($!)
wait_line "$D/up.addr" || exit 1
cat >"$D/gw.toml" <<TOML
[runtime]
upgrade_socket = "$D/upgrade.sock"
upgrade_drain_timeout = "30s"
[access_log]
enabled = false
[admin]
listen = "127.0.0.1:18131"
[[listeners]]
name = "public"
listen = "127.0.0.1:18130"
[[clusters]]
name = "up"
endpoints = [{ address = "$(cat "$D/up.addr")" }]
[[routes]]
name = "all"
match = { path_prefix = "/" }
cluster = "up"
TOML
$BIN/switchyard --log-format json run --config "$D/gw.toml" 2>"$D/gw.log" & PIDS+=($!)
wait_port 18130 && wait_port 18131 || { tail "$D/gw.log" >&2; exit 1; }

wrk -t2 -c"$CONNS" -d"${SECS}s" --latency http://127.0.0.1:18130/ >"$D/wrk.txt" 2>&1 & WRK=$!; PIDS+=($WRK)
gap=$(awk -v s="$SECS" -v n="$UPGRADES" 'BEGIN {print s / (n + 1)}')
done_upgrades=0
for i in $(seq 1 "$UPGRADES"); do
  sleep "$gap"
  if out=$($BIN/switchyard upgrade --config "$D/gw.toml" 2>&1); then
    done_upgrades=$((done_upgrades + 1))
    PIDS+=("$(echo "$out" | awk '{print $3}')")  # the new process: stopped on exit, by pid
  else
    echo "upgrade $i failed: $out" >&2
  fi
done
wait "$WRK"

requests=$(awk '/requests in/ {print $1}' "$D/wrk.txt")
rate=$(awk '/Requests\/sec/ {print $2}' "$D/wrk.txt")
p99=$(awk '/^ +99%/ {print $2}' "$D/wrk.txt")
errors=$(awk '/Socket errors/ {print}' "$D/wrk.txt")
non2xx=$(awk '/Non-2xx/ {print $NF}' "$D/wrk.txt")
echo "$done_upgrades of $UPGRADES upgrades under $SECS s of wrk ($CONNS keep-alive connections)"
echo "requests: $requests ($rate req/s, p99 $p99)"
echo "socket errors: ${errors:-none (connect 0, read 0, write 0, timeout 0)}"
echo "non-2xx answers: ${non2xx:-0}"
