#!/usr/bin/env bash
# Side-by-side load run with wrk, on this machine, in one run: direct to one
# upstream (the ceiling), nginx, HAProxy and Switchyard as reverse proxies.
# Prints TSV rows, a summary of medians with Switchyard's ratio to nginx, and
# Switchyard's idle RSS (about 1s after it listens, before any load) and peak RSS.
#
#   bench/run.sh                                   # from the repository root (or anywhere)
#   DURATION=30 ROUNDS=3 WORKERS=2 bench/run.sh
#   SCENARIOS=keepalive PROXIES="nginx switchyard" bench/run.sh
#
# Upstreams: one nginx (1 worker) listening on 127.0.0.1:19001 and :19002,
# answering `GET /` with a 20-byte body and `GET /1m` with 1 MiB. Every proxy
# forwards every path round-robin to both, with keep-alive to the upstreams.
# Ports: switchyard 18080, nginx 18081, haproxy 18082. All load goes to 127.0.0.1.
#
# Env: DURATION (s per wrk run, default 10), ROUNDS (default 2, interleaved),
#      WORKERS (worker processes/threads of every proxy, default 1),
#      SCENARIOS (default "keepalive close 1m"), PROXIES (default
#      "direct nginx haproxy switchyard"), CONNS (keepalive conns, default 64),
#      SWITCHYARD (binary, default target/release/switchyard; built if missing),
#      OUT (optional file to copy the TSV rows to).
# Scenarios: keepalive = small responses, CONNS (64) connections;
#            close     = `Connection: close`, a new connection per request, 16 conns;
#            1m        = 1 MiB responses, 8 connections;
#            tls       = keepalive over HTTPS (TLS 1.3, ECDSA P-256 certificate);
#            tlsnew    = `Connection: close` over HTTPS: a full TLS handshake per
#                        request (wrk does not resume sessions), 16 conns.
#            (tls and tlsnew are not in the default list: SCENARIOS="tls tlsnew".
#            HTTPS ports: nginx 18443, switchyard 18444, haproxy 18445.)
#            static    = a 1 KiB file from disk (nginx `alias`, Switchyard `static`);
#            gzip      = a 20 KiB JSON-like text from the upstream, gzip-compressed
#                        by the proxy (level 6 everywhere; HAProxy's own gzip);
#            br, zstd  = the same with brotli / zstd (Switchyard only: stock nginx
#                        and HAProxy have neither). Not in the default list:
#                        SCENARIOS="static gzip br zstd".
#            cache     = cache hits: a 1 KiB upstream response with
#                        `Cache-Control: max-age=3600`, stored by nginx
#                        (`proxy_cache`), Varnish (`-s malloc`) and Switchyard
#                        (`cache`); only those three run it. Varnish (port 18083)
#                        runs when PROXIES names it, pinned with taskset to the CPUs
#                        in VARNISH_CPUS (default "0": one CPU, as WORKERS=1 gives
#                        the others; VARNISH_CPUS=0-1 lets it use both):
#                        SCENARIOS=cache PROXIES="nginx varnish switchyard".
#            cachegz   = cache hits on the 20 KiB JSON text for a client asking for
#                        gzip: nginx `proxy_cache` + `gzip` (level 6) and
#                        Switchyard `cache` + `compression` (gzip); nginx and
#                        Switchyard only.
set -u
cd "$(dirname "$0")/.."   # repository root
DURATION=${DURATION:-10}; CONNS=${CONNS:-64}; WORKERS=${WORKERS:-1}; ROUNDS=${ROUNDS:-2}
SCENARIOS=${SCENARIOS:-"keepalive close 1m"}
PROXIES=${PROXIES:-"direct nginx haproxy switchyard"}
SWITCHYARD=${SWITCHYARD:-target/release/switchyard}

need=0
for t in nginx haproxy wrk curl python3; do command -v $t >/dev/null || need=1; done
if [ $need = 1 ]; then
  apt-get update -qq && apt-get install -y -qq nginx haproxy wrk curl python3 >/dev/null \
    || { echo "could not install nginx/haproxy/wrk" >&2; exit 1; }
fi
if [[ " $PROXIES " == *" varnish "* ]] && ! command -v varnishd >/dev/null; then
  apt-get update -qq && apt-get install -y -qq varnish >/dev/null || { echo "could not install varnish" >&2; exit 1; }
fi
if [[ " $PROXIES " == *" switchyard "* ]] && [ ! -x "$SWITCHYARD" ]; then
  echo "building $SWITCHYARD ..." >&2
  cargo build --release -p switchyard >&2 || { echo "cargo build failed" >&2; exit 1; }
fi

D=$(mktemp -d); PIDS=()
cleanup() { # kill only the processes this script started, by pid
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null; done
  rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
forget() { local keep=() p; for p in "${PIDS[@]:-}"; do [ -n "$p" ] && [ "$p" != "$1" ] && keep+=("$p"); done; PIDS=("${keep[@]:-}"); }
wait_port() { for i in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }

# --- upstream ---------------------------------------------------------------
head -c 1048576 /dev/zero | tr '\0' x >"$D/1m"
mkdir -p "$D/static" "$D/gz"
head -c 1024 /dev/zero | tr '\0' s >"$D/static/small.txt"
python3 -c "
import json
rows = [{'id': i, 'name': 'item %d' % i, 'tags': ['a', 'b', 'c'], 'price': i * 1.25} for i in range(260)]
print(json.dumps(rows)[:20480])" >"$D/gz/page.json"
cat >"$D/up.conf" <<C
user root; worker_processes 1; daemon off; pid $D/up.pid; error_log $D/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000;
  server { listen 127.0.0.1:19001; listen 127.0.0.1:19002; root $D;
    location = / { return 200 "hello from upstream\n"; }
    location = /1m { try_files /1m =404; }
    location /cache/ { alias $D/static/; add_header Cache-Control "max-age=3600"; }
    location /cachegz/ { alias $D/gz/; add_header Cache-Control "max-age=3600"; } } }
C
nginx -c "$D/up.conf" -e "$D/up.err" & PIDS+=($!)
wait_port 19001 && wait_port 19002 || { cat "$D/up.err" >&2; exit 1; }

# --- a certificate for the TLS scenarios ------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$D/tls.key" -out "$D/tls.crt" \
  -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null \
  || { echo "openssl could not make a certificate" >&2; exit 1; }
cat "$D/tls.crt" "$D/tls.key" >"$D/tls.pem"

# --- proxies ----------------------------------------------------------------
cat >"$D/nginx.conf" <<C
user root; worker_processes $WORKERS; daemon off; pid $D/nx.pid; error_log $D/nx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000;
  proxy_cache_path $D/nxcache levels=1:2 keys_zone=c:10m max_size=256m inactive=1h;
  upstream up { server 127.0.0.1:19001; server 127.0.0.1:19002; keepalive 128; }
  server { listen 127.0.0.1:18081;
    location /static/ { alias $D/static/; }
    location /cache/ { proxy_cache c; proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location /cachegz/ { proxy_cache c; gzip on; gzip_comp_level 6; gzip_types text/plain application/json; gzip_min_length 1024;
      gzip_proxied any; proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location /gz/ { gzip on; gzip_comp_level 6; gzip_types text/plain application/json; gzip_min_length 1024;
      gzip_proxied any; proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:18443 ssl; ssl_certificate $D/tls.crt; ssl_certificate_key $D/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
cat >"$D/haproxy.cfg" <<C
global
  nbthread $WORKERS
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend f
  bind 127.0.0.1:18082
  bind 127.0.0.1:18445 ssl crt $D/tls.pem
  default_backend b
backend b
  balance roundrobin
  http-reuse always
  compression algo gzip
  compression type text/plain application/json
  server s1 127.0.0.1:19001
  server s2 127.0.0.1:19002
C
# run a private copy so a concurrent `cargo build` cannot swap the binary between rounds
if [[ " $PROXIES " == *" switchyard "* ]]; then cp "$SWITCHYARD" "$D/switchyard-bin" && SWITCHYARD="$D/switchyard-bin"; fi
sed -E "s/^workers *=.*/workers = $WORKERS/" bench/harness.toml >"$D/switchyard.toml"
cat >>"$D/switchyard.toml" <<C

[[listeners]]
name = "secure"
listen = "127.0.0.1:18444"
protocol = "https"
tls = { certificates = [{ cert = "$D/tls.crt", key = "$D/tls.key" }] }

[[routes]]
name = "static"
match = { path_prefix = "/static/" }
rewrite = { prefix = "/" }
static = { root = "$D/static" }

[[routes]]
name = "cache"
match = { path_prefix = "/cache/" }
cluster = "up"
cache = {}

[[routes]]
name = "cachegz"
match = { path_prefix = "/cachegz/" }
cluster = "up"
cache = {}
compression = { algorithms = ["gzip"] }

[[routes]]
name = "gzip"
match = { path_prefix = "/gz/" }
cluster = "up"
compression = { algorithms = ["gzip"] }

[[routes]]
name = "br"
match = { path_prefix = "/br/" }
rewrite = { prefix = "/gz/" }
cluster = "up"
compression = { algorithms = ["br"] }

[[routes]]
name = "zstd"
match = { path_prefix = "/zstd/" }
rewrite = { prefix = "/gz/" }
cluster = "up"
compression = { algorithms = ["zstd"] }
C
if [[ " $PROXIES " == *" switchyard "* ]]; then
  "$SWITCHYARD" check --config "$D/switchyard.toml" >&2 || { echo "switchyard config invalid" >&2; exit 1; }
fi

start() { # name -> sets PORT and PPID_
  case $1 in
    direct) PORT=19001; TLSPORT=; PPID_= ;;
    nginx) nginx -c "$D/nginx.conf" -e "$D/nx.err" & PPID_=$!; PORT=18081; TLSPORT=18443 ;;
    haproxy) haproxy -f "$D/haproxy.cfg" -db >>"$D/haproxy.log" 2>&1 & PPID_=$!; PORT=18082; TLSPORT=18445 ;;
    varnish) taskset -c "${VARNISH_CPUS:-0}" varnishd -F -n "$D/varnish" -a 127.0.0.1:18083 -b 127.0.0.1:19001 -s malloc,256m \
               -p thread_pools=1 >>"$D/varnish.log" 2>&1 & PPID_=$!; PORT=18083; TLSPORT= ;;
    switchyard) "$SWITCHYARD" run --config "$D/switchyard.toml" --log-level warn >>"$D/switchyard.log" 2>&1 &
                PPID_=$!; PORT=18080; TLSPORT=18444 ;;
    *) echo "unknown proxy $1" >&2; return 1 ;;
  esac
  [ -n "$PPID_" ] && PIDS+=($PPID_)
  wait_port $PORT || { stop; return 1; }
}
sanity() { # $1 = name: both bodies come through intact
  local b n
  b=$(curl -s --max-time 5 "http://127.0.0.1:$PORT/")
  n=$(curl -s --max-time 5 -o /dev/null -w '%{size_download}' "http://127.0.0.1:$PORT/1m")
  [ "$b" = "hello from upstream" ] && [ "$n" = 1048576 ] \
    || echo "WARNING: $1 sanity check failed: body='$b' 1m_size=$n" >&2
}
stop() { [ -n "$PPID_" ] && { kill $PPID_ 2>/dev/null; wait $PPID_ 2>/dev/null; forget $PPID_; }; sleep 0.3; }
rss_kib() { # $1 = field (VmRSS|VmHWM), $2 = pid: sum over the process and its children
  local p sum=0 v
  for p in $2 $(ps -o pid= --ppid "$2" 2>/dev/null); do
    v=$(awk -v f="$1:" '$1==f {print $2}' /proc/$p/status 2>/dev/null); sum=$((sum + ${v:-0}))
  done
  echo $sum
}

run() { # scenario port -> "rps p50 p99 MBps non2xx sockerr"
  local args=(-t1 -c"$CONNS" -d"${DURATION}s" --latency) path=/ url
  case $1 in close|tlsnew) args+=(-H 'Connection: close'); args[1]=-c16 ;; 1m) path=/1m; args[1]=-c8 ;;
    static) path=/static/small.txt ;;
    cache) path=/cache/small.txt ;;
    cachegz) path=/cachegz/page.json; args+=(-H 'Accept-Encoding: gzip') ;;
    gzip) path=/gz/page.json; args+=(-H 'Accept-Encoding: gzip') ;;
    br|zstd) path=/$1/page.json; args+=(-H "Accept-Encoding: $1") ;;
  esac
  case $1 in tls*) url="https://localhost:$TLSPORT$path" ;; *) url="http://127.0.0.1:$2$path" ;; esac
  wrk "${args[@]}" "$url" >"$D/wrk.out" 2>&1
  cat "$D/wrk.out" >>"$D/wrk.all"
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /m$/) return v*60000; if (v ~ /s$/) return v*1000; return v }
    function mb(v) { if (v ~ /GB/) return v*1024; if (v ~ /MB/) return v+0; if (v ~ /KB/) return v/1024; return v/1048576 }
    / 50%/ {p50=ms($2)} / 99%/ {p99=ms($2)} /Requests\/sec/ {rps=$2} /Transfer\/sec/ {t=mb($2)}
    /Non-2xx or 3xx/ {bad=$NF}
    /Socket errors/ {gsub(",", ""); se=$4+$6+$8+$10; sd="c" $4 "/r" $6 "/w" $8 "/t" $10}
    END {printf "%.0f\t%.3f\t%.3f\t%.1f\t%d\t%s\n", rps, p50, p99, t, bad+0, (se>0 ? sd : "0")}' "$D/wrk.out"
}

ROWS="$D/rows.tsv"; : >"$ROWS"; : >"$D/idle.tsv"
printf 'round\tproxy\tscenario\treq_s\tp50_ms\tp99_ms\tMB_s\tnon2xx\tsock_err\tpeak_rss_kib\n'
for r in $(seq 1 "$ROUNDS"); do
  for p in $PROXIES; do
    start $p || { echo "skipping $p in round $r" >&2; continue; }
    if [ "$p" = switchyard ]; then
      sleep 1   # idle: ~1s after it listens, before any request
      printf '%s\t%s\n' "$r" "$(rss_kib VmRSS $PPID_)" >>"$D/idle.tsv"
    fi
    [ "$p" != varnish ] && sanity $p
    for s in $SCENARIOS; do
      case $s in tls*) [ -z "$TLSPORT" ] && continue ;; esac   # no TLS straight to the upstream
      case $s:$p in static:direct|static:haproxy|gzip:direct|br:[!s]*|zstd:[!s]*) continue ;; esac   # not something it does
      case $s:$p in cache*:direct|cache*:haproxy|cachegz:varnish) continue ;; *:varnish) [ $s = cache ] || continue ;; esac
      [ $s = cache ] && curl -s -o /dev/null "http://127.0.0.1:$PORT/cache/small.txt"   # stored before the run
      [ $s = cachegz ] && curl -s -o /dev/null -H 'Accept-Encoding: gzip' "http://127.0.0.1:$PORT/cachegz/page.json"
      wrk -t1 -c8 -d1s "http://127.0.0.1:$PORT/" >/dev/null 2>&1   # warm-up
      res=$(run $s $PORT)
      rss=-; [ -n "$PPID_" ] && rss=$(rss_kib VmHWM $PPID_)
      printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$p" "$s" "$res" "$rss" | tee -a "$ROWS"
    done
    stop
  done
done
[ -n "${OUT:-}" ] && cp "$ROWS" "$OUT"
[ -s "$D/switchyard.log" ] && { echo; echo "switchyard log (warn and above):"; tail -n 20 "$D/switchyard.log"; }

echo
echo "medians over $ROUNDS round(s); WORKERS=$WORKERS DURATION=${DURATION}s; ratios = proxy / nginx, same scenario (req/s: higher is better, p99: lower is better)"
python3 - "$ROWS" "$D/idle.tsv" <<'PY'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
idle = [l.rstrip("\n").split("\t") for l in open(sys.argv[2]) if l.strip()]
by = collections.defaultdict(lambda: ([], [], []))
errs = collections.defaultdict(list)
peak = {}
for r in rows:
    k = (r[1], r[2])
    for i, col in enumerate((3, 4, 5)):
        by[k][i].append(float(r[col]))
    if r[7] != "0" or r[8] != "0":
        errs[k].append("round %s: non2xx=%s sock_err=%s" % (r[0], r[7], r[8]))
    if r[9] != "-":
        peak[r[1]] = max(peak.get(r[1], 0), int(r[9]))
med = {k: tuple(statistics.median(v) for v in vs) for k, vs in by.items()}
scen = list(dict.fromkeys(r[2] for r in rows))
prox = list(dict.fromkeys(r[1] for r in rows))
print("%-10s %-11s %10s %9s %9s   %s" % ("scenario", "proxy", "req/s", "p50 ms", "p99 ms", "vs nginx (req/s, p99)"))
for s in scen:
    for p in prox:
        if (p, s) not in med:
            continue
        rps, p50, p99 = med[(p, s)]
        base = med.get(("nginx", s))
        ratio = ""
        if base and p != "nginx":
            ratio = "x%.2f, x%.2f" % (rps / base[0], p99 / base[2] if base[2] else float("nan"))
        print("%-10s %-11s %10.0f %9.3f %9.3f   %s" % (s, p, rps, p50, p99, ratio))
    print()
if errs:
    print("wrk errors (non-2xx responses / socket errors c=connect r=read w=write t=timeout):")
    for (p, s), v in sorted(errs.items()):
        print("  %-10s %-10s %s" % (p, s, "; ".join(v)))
else:
    print("wrk errors: none (no non-2xx responses, no socket errors)")
if idle:
    print("switchyard idle RSS (1s after listening, before load): " +
          ", ".join("round %s %.1f MiB" % (r, int(v) / 1024) for r, v in idle))
if "switchyard" in peak:
    print("switchyard peak RSS (VmHWM, max over rounds): %.1f MiB" % (peak["switchyard"] / 1024))
others = ", ".join("%s %.1f MiB" % (p, v / 1024) for p, v in peak.items() if p != "switchyard")
if others:
    print("for comparison, peak RSS incl. worker processes: " + others)
PY
