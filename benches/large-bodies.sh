#!/usr/bin/env bash
# Large bodies side by side: a 1 GiB upload and a 1 GiB download with curl through sidekey
# (HTTP/1.1 upstream pool, and HTTP/2 for the download), through nginx doing the same job, and
# straight to the upstream. Same upstream for all (examples/bulk_load.rs: TLS, h1 + h2 by ALPN,
# reads every body to the end before answering). The proxy is pinned to core 0, curl and the
# upstream to core 1. Prints MB/s (curl's own figure), the proxy's CPU (user+system, whole
# process tree) per GiB, and its peak RSS.
#
#   benches/large-bodies.sh                   # 1 GiB, 3 rounds
#   BULK_MIB=256 BULK_ROUNDS=1 benches/large-bodies.sh
#
# nginx: the peer harness's job (allow-list map, key header, verified TLS, keep-alive pool) with
# `client_max_body_size 0`, `proxy_request_buffering off` and `proxy_buffering off`, so it
# streams as sidekey does instead of spooling the body to a temporary file.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mib="${BULK_MIB:-1024}"
rounds="${BULK_ROUNDS:-3}"
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
truncate -s "${mib}M" "$work/upload.bin"
bytes=$((mib * 1024 * 1024))

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_sidekey() { # name protocol
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
file = "api-key"
[service]
name = "bulk-bench"
allow = ["bulk"]
[permissions]
bulk = ["GET /v1/sandboxes/blob/{n}", "POST /v1/sandboxes/{id}/exec"]
TOML
  RUST_LOG=warn,sidekey=info,sidekey::access=off $pin_proxy "$bin" run --config "$work/$1.toml" > "$work/$1.out" 2>&1 &
  pid=$!
  addr=""
  for _ in $(seq 1 100); do
    addr="$(sed -n 's/.*"listener":"\([0-9.:]*\)".*/\1/p' "$work/$1.out" | head -1)"
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$work/$1.out" >&2; echo "sidekey did not start" >&2; exit 1; }
}

start_nginx() {
  local p
  p="$(free_port)"
  mkdir -p "$work/nginx-tmp"
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
            proxy_request_buffering off;
            proxy_buffering off;
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
  rate="$($kind "$@")"
  after=0
  [ "$name" = direct ] || after="$(ticks "$pid")"
  awk -v n="$name" -v k="$kind" -v r="$rate" -v t=$((after - before)) -v hz="$hz" -v mib="$mib" \
    'BEGIN { if (n == "direct") printf "%-12s %-5s %6d MB/s\n", n, k, r;
             else printf "%-12s %-5s %6d MB/s %8.0f ms CPU/GiB\n", n, k, r, t / hz * 1e3 * 1024 / mib }'
}

echo "# $mib MiB per transfer, $rounds rounds; proxy on core 0, curl + upstream on core 1"
for r in $(seq 1 "$rounds"); do
  echo "## round $r"
  measure direct up --http1.1 --cacert "$work/ca.pem" "https://localhost:$port/v1/sandboxes/s1/exec"
  measure direct down --http1.1 --cacert "$work/ca.pem" "https://localhost:$port/v1/sandboxes/blob/$bytes"
  start_sidekey sidekey-h1 http1
  measure sidekey-h1 up "http://$addr/v1/sandboxes/s1/exec"
  measure sidekey-h1 down "http://$addr/v1/sandboxes/blob/$bytes"
  echo "# sidekey-h1 peak RSS $(hwm "$pid") kB"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  start_sidekey sidekey-h2 http2
  measure sidekey-h2 up "http://$addr/v1/sandboxes/s1/exec"
  measure sidekey-h2 down "http://$addr/v1/sandboxes/blob/$bytes"
  echo "# sidekey-h2 peak RSS $(hwm "$pid") kB"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  start_nginx
  measure nginx up "http://$addr/v1/sandboxes/s1/exec"
  measure nginx down "http://$addr/v1/sandboxes/blob/$bytes"
  echo "# nginx peak RSS $(hwm "$pid") kB"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
