#!/usr/bin/env bash
# The forward path against the reverse listener: requests per second and sidekey's CPU per
# request, through a CONNECT tunnel with keep-alive (TLS to sidekey's leaf, HTTP/1.1 inside)
# and through the reverse listener (plain HTTP), to the same TLS mock upstream, next to a direct
# baseline (the same client over TLS straight to the upstream, keep-alive).
# sidekey pinned to core 0, load and upstream to core 1 when there are two cores.
#
#   benches/forward.sh                       # 50 connections, 10 s each way, 3 rounds
#   FWD_CONNS=10 FWD_SECS=5 FWD_ROUNDS=1 benches/forward.sh
# Then new connections per second (FWD_NEW_CONNS workers in a closed loop, each request on a
# connection of its own, closed after the answer): plain HTTP to the reverse listener, and
# tunnels through the forward proxy (CONNECT + TLS handshake + GET + close), with a full
# handshake every time and with the client resuming its TLS session. FWD_NEW=0 skips it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
conns="${FWD_CONNS:-50}"
secs="${FWD_SECS:-10}"
rounds="${FWD_ROUNDS:-3}"
host="api.bench.test"
bin="${SIDEKEY_BIN:-$("$root/benches/build-release.sh" 2>/dev/null)}"
cargo build --release --locked --example forward_load --manifest-path "$root/Cargo.toml" >&2
load="$root/target/release/examples/forward_load"
pin_proxy="" pin_load=""
if [ "$(nproc)" -ge 2 ] && command -v taskset > /dev/null; then
  pin_proxy="taskset -c 0" pin_load="taskset -c 1"
fi
work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
$pin_load "$load" upstream "$work" "$host" > "$work/upstream.out" &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/upstream.out" ] && break; sleep 0.05; done
port="$(head -1 "$work/upstream.out")"
"$bin" ca init --dir "$work/ca" --host "$host" > /dev/null
printf %s "sk_bench_forward_0001" > "$work/api-key"
cat > "$work/sidekey.toml" <<TOML
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[forward_proxy]
address = "127.0.0.1:0"
ca_cert_file = "ca/ca.crt"
ca_key_file = "ca/ca.key"
[api.bench]
url = "https://$host"
connect_to = "127.0.0.1:$port"
ca_file = "upstream-ca.pem"
path_prefix = "/bench"
protocol = "http1"
credential = { file = "api-key" }
permissions = { "read" = ["GET /v1/items"] }
[service]
name = "forward-bench"
allow = ["bench/read"]
TOML
RUST_LOG=warn,sidekey=info,sidekey::access=off $pin_proxy "$bin" run --config "$work/sidekey.toml" > "$work/sidekey.out" 2>&1 &
pid=$!
pids+=($pid)
fwd="" rev=""
for _ in $(seq 1 100); do
  fwd="$(sed -n 's/.*"forward_proxy":"\([0-9.:]*\)".*/\1/p' "$work/sidekey.out" | head -1)"
  rev="$(sed -n 's/.*"listener":"\([0-9.:]*\)".*/\1/p' "$work/sidekey.out" | head -1)"
  [ -n "$fwd" ] && [ -n "$rev" ] && break
  sleep 0.1
done
[ -n "$fwd" ] || { cat "$work/sidekey.out" >&2; echo "sidekey did not start" >&2; exit 1; }
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz="$(getconf CLK_TCK)"
measure() {
  local before after out
  before="$(ticks)"
  out="$($pin_load "$load" "$@")"
  after="$(ticks)"
  echo "$out" | awk -v t=$((after - before)) -v hz="$hz" '{ printf "%.0f %.1f", $2, t / hz * 1e6 / $1 }'
}
echo "# $conns keep-alive connections, ${secs} s each, sidekey on one core"
echo "round direct_rps reverse_rps reverse_cpu_us_per_req forward_rps forward_cpu_us_per_req"
for r in $(seq 1 "$rounds"); do
  dr="$($pin_load "$load" direct "127.0.0.1:$port" "$host" /v1/items "$work/upstream-ca.pem" "$conns" "$secs" | awk '{print $2}')"
  rv="$(measure reverse "$rev" /bench/v1/items "$conns" "$secs")"
  fw="$(measure forward "$fwd" "$host" /v1/items "$work/ca/ca.crt" "$conns" "$secs")"
  echo "$r $dr $rv $fw"
done
if [ "${FWD_NEW:-1}" = 1 ]; then
  nc="${FWD_NEW_CONNS:-8}" ns="${FWD_NEW_SECS:-5}"
  echo "# new connections: $nc workers, ${ns} s each, one request per connection"
  echo "round reverse_conn_per_s reverse_cpu_us_per_conn tunnel_per_s tunnel_cpu_us resumed_per_s resumed_cpu_us"
  for r in $(seq 1 "$rounds"); do
    rv="$(measure reverse-new "$rev" /bench/v1/items "$nc" "$ns")"
    fw="$(measure forward-new "$fwd" "$host" /v1/items "$work/ca/ca.crt" "$nc" "$ns")"
    fr="$(measure forward-new "$fwd" "$host" /v1/items "$work/ca/ca.crt" "$nc" "$ns" resume)"
    echo "$r $rv $fw $fr"
  done
fi
echo "# sidekey RSS after: $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") kB, peak $(awk '/VmHWM/ {print $2}' "/proc/$pid/status") kB"
