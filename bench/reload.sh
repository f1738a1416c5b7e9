#!/usr/bin/env bash
# A reload of a 10,000-route configuration under load, in one run:
#
#   - the time of `PUT /api/config` changing one route (parse, check, build
#     the snapshot, swap it in), over RELOADS reloads;
#   - wrk's p50/p99 on one route, for SECS seconds without reloads, then for
#     SECS seconds with a reload every second.
#
#   bench/reload.sh
#   ROUTES=10000 SECS=10 bench/reload.sh
#
# Env: ROUTES (default 10000), CLUSTERS (default 100), SECS (default 10),
#      RELOADS (timed reloads, default 10), CONNS (wrk, default 16).
# Ports: switchyard 18120, admin 18121. Loopback only.
set -u
cd "$(dirname "$0")/.."
ROUTES=${ROUTES:-10000}; CLUSTERS=${CLUSTERS:-100}; SECS=${SECS:-10}; RELOADS=${RELOADS:-10}; CONNS=${CONNS:-16}
. bench/lib.sh
release_with_wrk

$BIN/examples/json_backend upstream >"$D/up.addr" & PIDS+=($!)
wait_line "$D/up.addr" || exit 1
python3 - "$D/gw.toml" "$ROUTES" "$CLUSTERS" "$(cat "$D/up.addr")" <<'PY'
import sys
path, routes, clusters, upstream = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
out = ['[access_log]\nenabled = false\n[admin]\nlisten = "127.0.0.1:18121"\n[[listeners]]\nname = "public"\nlisten = "127.0.0.1:18120"\n']
for j in range(clusters):
    out.append(f'[[clusters]]\nname = "c{j}"\nendpoints = [{{ address = "{upstream}" }}]\n')
for i in range(routes):
    out.append(f'[[routes]]\nname = "r{i}"\nmatch = {{ path = "/r/{i}" }}\ncluster = "c{i % clusters}"\n')
open(path, "w").write("\n".join(out))
PY
$BIN/switchyard --log-format json run --config "$D/gw.toml" 2>"$D/gw.log" & PIDS+=($!)
wait_port 18120 && wait_port 18121 || { tail "$D/gw.log" >&2; exit 1; }
curl -sf http://127.0.0.1:18121/api/config >"$D/config.json" || { echo "GET /api/config failed" >&2; exit 1; }

# One reload: route r1's path changes; prints the PUT's seconds.
reload() {
  python3 - "$D/config.json" "$D/next.json" "$1" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
doc["routes"][1]["match"]["path"] = "/r/1/v" + sys.argv[3]
json.dump(doc, open(sys.argv[2], "w"))
PY
  curl -s -o /dev/null -w "%{http_code} %{time_total}\n" -X PUT --data-binary @"$D/next.json" http://127.0.0.1:18121/api/config
}
: >"$D/times"
for i in $(seq 1 "$RELOADS"); do reload "$i" | awk '$1==200 {print $2*1000}' >>"$D/times"; done
[ "$(wc -l <"$D/times")" = "$RELOADS" ] || { echo "some reloads failed" >&2; exit 1; }

latency() { # wrk: "p50 p99" in ms
  wrk -t1 -c"$CONNS" -d"${SECS}s" --latency http://127.0.0.1:18120/r/5 2>&1 | awk '
    function ms(v) { if (v ~ /us$/) {sub(/us/,"",v); return v/1000} if (v ~ /ms$/) {sub(/ms/,"",v); return v} sub(/s$/,"",v); return v*1000 }
    /^ +50%/ {p50=ms($2)} /^ +99%/ {p99=ms($2)} /Requests\/sec/ {rps=$2} END {print p50, p99, rps}'
}
quiet=$(latency)
( for i in $(seq 1 "$SECS"); do sleep 1; reload "x$i" >/dev/null; done ) & RELOADER=$!; PIDS+=($RELOADER)
busy=$(latency)
wait "$RELOADER" 2>/dev/null
echo "$ROUTES routes, $CLUSTERS clusters"
echo "PUT /api/config changing one route: median $(median <"$D/times") ms, max $(sort -g "$D/times" | tail -1) ms over $RELOADS reloads"
echo "$quiet" | awk '{printf "load on /r/5, no reloads:       p50 %.2f ms  p99 %.2f ms  %s req/s\n", $1, $2, $3}'
echo "$busy" | awk '{printf "load on /r/5, a reload a second: p50 %.2f ms  p99 %.2f ms  %s req/s\n", $1, $2, $3}'
