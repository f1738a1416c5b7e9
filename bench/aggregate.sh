#!/usr/bin/env bash
# Aggregation overhead, in one run: a "screen" made of three JSON calls,
#
#   aggregate:  one request to a Switchyard `aggregate` route that makes the
#               three calls in parallel;
#   sequential: the same three calls made one after another by the client
#               through plain Switchyard routes (wrk rotates the three paths
#               on each connection, so a screen is three requests in a row).
#
# Each upstream answers after DELAY ms (0: gateway overhead only). Reports
# screens per second and the mean latency of a screen for both, medians over
# ROUNDS interleaved runs, and their ratios.
#
#   bench/aggregate.sh
#   DELAY=10 ROUNDS=5 bench/aggregate.sh
#
# Env: DELAY (ms, default 0), ROUNDS (default 3), SECS (per run, default 10),
#      CONNS (wrk connections, default 32), WORKERS (Switchyard threads, 1).
# Ports: switchyard 18110. Loopback only.
set -u
cd "$(dirname "$0")/.."
DELAY=${DELAY:-0}; ROUNDS=${ROUNDS:-3}; SECS=${SECS:-10}; CONNS=${CONNS:-32}; WORKERS=${WORKERS:-1}
. bench/lib.sh
release_with_wrk

for s in profile orders offers; do
  $BIN/examples/json_backend $s "$DELAY" >"$D/$s.addr" & PIDS+=($!)
  wait_line "$D/$s.addr" || exit 1
done
cat >"$D/gw.toml" <<TOML
[runtime]
workers = $WORKERS
[access_log]
enabled = false
[[listeners]]
name = "public"
listen = "127.0.0.1:18110"
[[clusters]]
name = "profile"
endpoints = [{ address = "$(cat "$D/profile.addr")" }]
[[clusters]]
name = "orders"
endpoints = [{ address = "$(cat "$D/orders.addr")" }]
[[clusters]]
name = "offers"
endpoints = [{ address = "$(cat "$D/offers.addr")" }]
[[routes]]
name = "home"
match = { path = "/home/{user}" }
aggregate = { calls = [
  { name = "profile", cluster = "profile", path = "/users/{path.user}" },
  { name = "orders", cluster = "orders", path = "/orders?user={path.user}" },
  { name = "offers", cluster = "offers", path = "/offers/{path.user}" },
] }
[[routes]]
match = { path_prefix = "/users/" }
cluster = "profile"
[[routes]]
match = { path_prefix = "/orders" }
cluster = "orders"
[[routes]]
match = { path_prefix = "/offers/" }
cluster = "offers"
TOML
$BIN/switchyard --log-format json run --config "$D/gw.toml" 2>"$D/gw.log" & PIDS+=($!)
wait_port 18110 || { cat "$D/gw.log" >&2; exit 1; }
curl -sf http://127.0.0.1:18110/home/ada >"$D/check.json" || { echo "the aggregate does not answer" >&2; exit 1; }
grep -q '"offers"' "$D/check.json" || { echo "unexpected answer: $(cat "$D/check.json")" >&2; exit 1; }

cat >"$D/rotate.lua" <<'LUA'
local paths = {"/users/ada", "/orders?user=ada", "/offers/ada"}
local i = 0
request = function()
  i = i % 3 + 1
  return wrk.format("GET", paths[i])
end
LUA

# One wrk run: prints "requests/s mean-latency-ms".
run() {
  wrk -t1 -c"$CONNS" -d"${SECS}s" --latency "$@" 2>&1 | awk '
    /Requests\/sec/ {rps=$2}
    /^    Latency/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; lat=v}
    END {print rps, lat}'
}

: >"$D/agg"; : >"$D/seq"
for r in $(seq 1 "$ROUNDS"); do
  # A screen: one aggregate request; or three sequential requests.
  run http://127.0.0.1:18110/home/ada >>"$D/agg"
  run -s "$D/rotate.lua" http://127.0.0.1:18110 >>"$D/seq"
done
agg_sps=$(awk '{print $1}' "$D/agg" | median)
agg_ms=$(awk '{print $2}' "$D/agg" | median)
seq_sps=$(awk '{print $1/3}' "$D/seq" | median)
seq_ms=$(awk '{print $2*3}' "$D/seq" | median)
echo "upstream delay ${DELAY} ms, ${CONNS} connections, ${ROUNDS} rounds of ${SECS}s, ${WORKERS} worker(s)"
printf "aggregate (1 request, 3 parallel calls): %10.0f screens/s  %8.2f ms per screen\n" "$agg_sps" "$agg_ms"
printf "sequential (3 client requests in a row): %10.0f screens/s  %8.2f ms per screen\n" "$seq_sps" "$seq_ms"
awk -v a="$agg_sps" -v s="$seq_sps" -v am="$agg_ms" -v sm="$seq_ms" \
  'BEGIN {printf "aggregate / sequential: %.2fx screens per second, %.2fx latency per screen\n", a/s, am/sm}'
