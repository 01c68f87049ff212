#!/usr/bin/env bash
# Large bodies side by side: a 1 GiB upload and a 1 GiB download with curl through sidekey
# (`protocol` http1, http2, and auto: HTTP/2 negotiated, large uploads over HTTP/1.1), through
# nginx doing the same job, and
# straight to the upstream. Same upstream for all (examples/bulk_load.rs: TLS, h1 + h2 by ALPN,
# reads every body to the end before answering). The proxy is pinned to core 0, curl and the
# upstream to core 1. Prints MB/s (curl's own figure), the proxy's CPU (user+system, whole
# process tree) per GiB, and its peak RSS.
#
#   benches/large-bodies.sh                   # 1 GiB, 3 rounds
#   BULK_MIB=256 BULK_ROUNDS=1 benches/large-bodies.sh
#   BULK_ONLY="sidekey-h1 nginx" benches/large-bodies.sh   # some rows only
#   BULK_PERF=1 BULK_ONLY=sidekey-h2 benches/large-bodies.sh  # + perf's top symbols per transfer
#   BULK_JSON=1 BULK_ONLY="sidekey-h1 sidekey-scrub" benches/large-bodies.sh  # JSON downloads,
#                                          # scanned for the key by the sidekey-scrub row
#
# nginx: the peer harness's job (allow-list map, key header, verified TLS, keep-alive pool) with
# `client_max_body_size 0` and nginx's default buffer sizes; row `nginx` with
# `proxy_request_buffering off` and `proxy_buffering off` (it streams, as sidekey does), row
# `nginx-spool` with both on (nginx's default: the body goes to a temporary file first).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mib="${BULK_MIB:-1024}"
rounds="${BULK_ROUNDS:-3}"
only=" ${BULK_ONLY:-direct sidekey-h1 sidekey-h2 sidekey-auto sidekey-sigv4 sidekey-scrub nginx nginx-spool} "
# Downloads as JSON text (application/json) instead of octet-stream.
json_query=""
[ "${BULK_JSON:-0}" = 1 ] && json_query="?json"
want() { [[ "$only" == *" $1 "* ]]; }
bin="${SIDEKEY_BIN:-$("$root/benches/build-release.sh" 2>/dev/null)}"
cargo build --release --locked --example bulk_load --manifest-path "$root/Cargo.toml" >&2
load="$root/target/release/examples/bulk_load"
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$nginx_bin" ] || { echo "nginx not found (../shared/peers/setup.sh installs it)" >&2; exit 2; }
pin_proxy="" pin_load=""
if [ "$(nproc)" -ge 2 ] && command -v taskset > /dev/null; then
  pin_proxy="taskset -c 0" pin_load="taskset -c 1"
fi
work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT

$pin_load "$load" upstream "$work" > "$work/upstream.out" &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/upstream.out" ] && break; sleep 0.05; done
port="$(head -1 "$work/upstream.out")"
key="sk_bench_bulk_0001"
printf %s "$key" > "$work/api-key"
printf %s "AKIDBENCH0001" > "$work/aws-id"
printf %s "bench/secret/key" > "$work/aws-secret"
# Row sidekey-sigv4: an S3-style API (payload = "unsigned": the upload streams) over HTTP/1.1.
sigv4='scheme = "aws_sigv4"
region = "eu-west-1"
service = "s3"
access_key_id_file = "aws-id"
secret_access_key_file = "aws-secret"'
truncate -s "${mib}M" "$work/upload.bin"
bytes=$((mib * 1024 * 1024))

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_sidekey() { # name protocol [credential table] [scrub mode: the API-table shape]
  local credential="${3:-file = \"api-key\"}"
  if [ -n "${4:-}" ]; then
    cat > "$work/$1.toml" <<TOML
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[api.bulk]
url = "https://localhost:$port"
ca_file = "ca.pem"
protocol = "$2"
path_prefix = "/"
scrub = "$4"
credential = { $credential }
[api.bulk.permissions]
bulk = ["GET /v1/sandboxes/blob/{n}", "POST /v1/sandboxes/{id}/exec"]
[service]
name = "bulk-bench"
allow = ["bulk/bulk"]
TOML
  else
    cat > "$work/$1.toml" <<TOML
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[upstream]
url = "https://localhost:$port"
ca_file = "ca.pem"
protocol = "$2"
[credential]
$credential
[service]
name = "bulk-bench"
allow = ["bulk"]
[permissions]
bulk = ["GET /v1/sandboxes/blob/{n}", "POST /v1/sandboxes/{id}/exec"]
TOML
  fi
  RUST_LOG=warn,sidekey=info,sidekey::access=off $pin_proxy "$bin" run --config "$work/$1.toml" > "$work/$1.out" 2>&1 &
  pid=$!
  pids+=($pid)
  addr=""
  for _ in $(seq 1 100); do
    addr="$(sed -n 's/.*"listener":"\([0-9.:]*\)".*/\1/p' "$work/$1.out" | head -1)"
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$work/$1.out" >&2; echo "sidekey did not start" >&2; exit 1; }
}

start_nginx() { # buffering: off (streams, as sidekey) | on (nginx's default: spools to a file)
  local p buffering="$1"
  p="$(free_port)"
  # nginx's worker runs as nobody: it must reach its temporary directory.
  mkdir -p "$work/nginx-tmp"
  chmod 755 "$work"
  chmod 1777 "$work/nginx-tmp"
  cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.error.log warn;
daemon off;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/nginx-tmp/body;
    proxy_temp_path $work/nginx-tmp/proxy;
    fastcgi_temp_path $work/nginx-tmp/fastcgi;
    uwsgi_temp_path $work/nginx-tmp/uwsgi;
    scgi_temp_path $work/nginx-tmp/scgi;
    client_max_body_size 0;
    map "\$request_method:\$uri" \$egress_allowed {
        default 0;
        "~^GET:/v1/sandboxes(/.*)?\$" 1;
        "~^POST:/v1/sandboxes/[^/]+/exec\$" 1;
    }
    upstream api { server 127.0.0.1:$port; keepalive 16; }
    server {
        listen 127.0.0.1:$p;
        location / {
            if (\$egress_allowed = 0) { return 403; }
            proxy_pass https://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host localhost;
            proxy_set_header Authorization "Bearer $key";
            proxy_request_buffering $buffering;
            proxy_buffering $buffering;
            proxy_ssl_server_name on;
            proxy_ssl_name localhost;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $work/ca.pem;
        }
    }
}
NGINX
  $pin_proxy "$nginx_bin" -c "$work/nginx.conf" -e "$work/nginx.error.log" &
  pid=$!
  pids+=($pid)
  addr="127.0.0.1:$p"
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://$addr/" && break; sleep 0.05; done
}

# user+system ticks of a process and its children (nginx's worker).
ticks() {
  local t=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
hwm() {
  local m=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    m=$((m + $(awk '/VmHWM/ {print $2}' "/proc/$p/status")))
  done
  echo "$m"
}
hz="$(getconf CLK_TCK)"

# curl: one transfer; prints MB/s (10^6 bytes) and checks what the upstream saw.
up() {
  local out
  out="$($pin_load curl -sS --fail -X POST -T "$work/upload.bin" -H 'content-type: application/octet-stream' \
    -w '\n%{speed_upload}' "$@")"
  echo "$out" | head -1 | grep -q "\"bytes\":$bytes" || { echo "upload incomplete: $out" >&2; exit 1; }
  echo "$out" | tail -1 | awk '{ printf "%.0f", $1 / 1e6 }'
}
down() {
  local out
  out="$($pin_load curl -sS --fail -o /dev/null -w '%{size_download} %{speed_download}' "$@")"
  [ "${out%% *}" = "$bytes" ] || { echo "download incomplete: $out" >&2; exit 1; }
  echo "$out" | awk '{ printf "%.0f", $2 / 1e6 }'
}
# measure NAME KIND URL...: MB/s and CPU ms per GiB for the proxy in $pid (direct: no proxy).
measure() {
  local name="$1" kind="$2" before after rate
  shift 2
  before=0
  [ "$name" = direct ] || before="$(ticks "$pid")"
  local perf=""
  if [ "${BULK_PERF:-0}" = 1 ] && [ "$name" != direct ]; then
    local busy
    busy="$(pgrep -P "$pid" | head -1 || true)" # nginx's worker; sidekey has no children
    [ -n "$busy" ] || busy="$pid"
    perf record -q -e cpu-clock -g -o "$work/perf.data" -p "$busy" 2> /dev/null &
    perf=$!
    sleep 0.3
  fi
  rate="$($kind "$@")"
  after=0
  [ "$name" = direct ] || after="$(ticks "$pid")"
  if [ -n "$perf" ]; then
    kill -INT "$perf"; wait "$perf" 2> /dev/null || true
    perf report -i "$work/perf.data" --no-children --sort sym --stdio -g none 2> /dev/null \
      | awk '/^ +[0-9.]+%/ { $2 = ""; print "#   " $0 }' | head -"${BULK_TOP:-25}" >&2 || true
  fi
  awk -v n="$name" -v k="$kind" -v r="$rate" -v t=$((after - before)) -v hz="$hz" -v mib="$mib" \
    'BEGIN { if (n == "direct") printf "%-12s %-5s %6d MB/s\n", n, k, r;
             else printf "%-12s %-5s %6d MB/s %8.0f ms CPU/GiB\n", n, k, r, t / hz * 1e3 * 1024 / mib }'
}

echo "# $mib MiB per transfer, $rounds rounds; proxy on core 0, curl + upstream on core 1"
for r in $(seq 1 "$rounds"); do
  echo "## round $r"
  if want direct; then
    measure direct up --http1.1 --cacert "$work/ca.pem" "https://localhost:$port/v1/sandboxes/s1/exec"
    measure direct down --http1.1 --cacert "$work/ca.pem" "https://localhost:$port/v1/sandboxes/blob/$bytes$json_query"
  fi
  for row in sidekey-h1:http1 sidekey-h2:http2 sidekey-auto:auto sidekey-sigv4:http1 sidekey-scrub:http1 nginx:off nginx-spool:on; do
    name="${row%%:*}" arg="${row#*:}"
    want "$name" || continue
    case "$name" in
      sidekey-sigv4) start_sidekey "$name" "$arg" "$sigv4" ;;
      sidekey-scrub) start_sidekey "$name" "$arg" 'file = "api-key"' bodies ;;
      sidekey*) start_sidekey "$name" "$arg" ;;
      nginx*) start_nginx "$arg" ;;
    esac
    # A small request first, as an app's traffic has: under auto, it finds HTTP/2.
    curl -s -o /dev/null "http://$addr/v1/sandboxes/blob/1"
    measure "$name" up "http://$addr/v1/sandboxes/s1/exec"
    measure "$name" down "http://$addr/v1/sandboxes/blob/$bytes$json_query"
    echo "# $name peak RSS $(hwm "$pid") kB"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
