#!/usr/bin/env bash
# Pub/sub fan-out on this machine, in one run: N SSE subscribers of one
# Switchyard hub topic, and N Redis SUBSCRIBE clients of one channel, each fed
# MESSAGES messages of SIZE bytes at RATE per second by one publisher
# (`hub_load`, crates/switchyard/examples/hub_load.rs). Reports, per round,
# deliveries, the publish rate achieved, delay from publish to receipt
# (p50/p99/max) and the servers' RSS.
#
#   bench/hub.sh
#   N=10000 MESSAGES=300 RATE=20 SIZE=100 ROUNDS=2 bench/hub.sh
#
# Switchyard runs with WORKERS worker threads (default 1); Redis is single
# threaded. Ports: switchyard 18095, redis 18096. Loopback only; only the
# processes this script starts are stopped, by pid.
set -u
cd "$(dirname "$0")/.."
N=${N:-10000}; MESSAGES=${MESSAGES:-200}; RATE=${RATE:-20}; SIZE=${SIZE:-100}
ROUNDS=${ROUNDS:-2}; WORKERS=${WORKERS:-1}
SWITCHYARD=${SWITCHYARD:-target/release/switchyard}

command -v redis-server >/dev/null || {
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null || { echo "could not install redis-server" >&2; exit 1; }
}
cargo build --release -p switchyard --example hub_load >&2 || { echo "cargo build failed" >&2; exit 1; }
LOAD=target/release/examples/hub_load

. bench/lib.sh
rss() { awk -v f="$1:" '$1==f {printf "%.1f", $2/1024}' /proc/$2/status; }

cp "$SWITCHYARD" "$D/switchyard-bin"
cat >"$D/hub.toml" <<C
[runtime]
workers = $WORKERS

[access_log]
enabled = false

[[listeners]]
name = "bench"
listen = "127.0.0.1:18095"
max_connections = 50000

[[routes]]
name = "bench"
match = { path_prefix = "/bench/" }
hub = { history = 0, queue = 1024, heartbeat = "60s", publish = [{ topics = ">" }] }
C
"$D/switchyard-bin" run --config "$D/hub.toml" --log-level warn >>"$D/switchyard.log" 2>&1 & SY=$!; PIDS+=($SY)
redis-server --port 18096 --bind 127.0.0.1 --save '' --appendonly no --maxclients $((N + 100)) \
  --dir "$D" >>"$D/redis.log" 2>&1 & RD=$!; PIDS+=($RD)
wait_port 18095 && wait_port 18096 || { cat "$D/switchyard.log" "$D/redis.log" >&2; exit 1; }
echo "idle RSS: switchyard $(rss VmRSS $SY) MiB, redis $(rss VmRSS $RD) MiB"

for r in $(seq 1 "$ROUNDS"); do
  printf 'round %s switchyard-sse %s switchyard_peak_rss_mib=%s\n' "$r" \
    "$("$LOAD" sse 127.0.0.1:18095 /bench/t "$N" "$MESSAGES" "$RATE" "$SIZE")" "$(rss VmHWM $SY)"
  printf 'round %s redis-pubsub   %s redis_peak_rss_mib=%s\n' "$r" \
    "$("$LOAD" redis 127.0.0.1:18096 "$N" "$MESSAGES" "$RATE" "$SIZE")" "$(rss VmHWM $RD)"
done
[ -s "$D/switchyard.log" ] && { echo "switchyard log:"; tail -n 5 "$D/switchyard.log"; }
