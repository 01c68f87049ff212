#!/usr/bin/env bash
# WebSocket tunnel throughput and sidekey's CPU per MB, against a direct connection.
#
# A TLS WebSocket echo upstream (examples/ws_load.rs) and a client that pushes binary
# messages while reading the echoes: once straight to the upstream (wss), once through
# `sidekey run` (ws to sidekey, TLS to the upstream). Prints MB/s for both (each byte counted
# there and back) and sidekey's user+system CPU per MB moved. sidekey is pinned to core 0,
# client and upstream to core 1 when there are two cores.
#
#   benches/websocket.sh                          # 512 MiB in 64 KiB messages, 3 rounds
#   WS_MIB=1024 WS_MSG_KIB=16 WS_ROUNDS=5 benches/websocket.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mib="${WS_MIB:-512}"
kib="${WS_MSG_KIB:-64}"
rounds="${WS_ROUNDS:-3}"
bin="${SIDEKEY_BIN:-$("$root/benches/build-release.sh" 2>/dev/null)}"
cargo build --release --locked --example ws_load --manifest-path "$root/Cargo.toml" >&2
load="$root/target/release/examples/ws_load"
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

printf %s "sk_bench_websocket_0001" > "$work/api-key"
cat > "$work/sidekey.toml" <<TOML
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[upstream]
url = "https://localhost:$port"
ca_file = "ca.pem"
[credential]
file = "api-key"
[service]
name = "ws-bench"
allow = ["stream"]
[permissions]
"stream" = [{ route = "GET /v1/stream", websocket = true }]
TOML
RUST_LOG=warn,sidekey=info,sidekey::access=warn $pin_proxy "$bin" run --config "$work/sidekey.toml" > "$work/sidekey.out" 2>&1 &
pid=$!
pids+=($pid)
addr=""
for _ in $(seq 1 100); do
  addr="$(sed -n 's/.*"listener":"\([0-9.:]*\)".*/\1/p' "$work/sidekey.out" | head -1)"
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/sidekey.out" "$work/sidekey.toml" >&2; echo "sidekey did not start" >&2; exit 1; }

ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz="$(getconf CLK_TCK)"
echo "# $mib MiB each way in ${kib} KiB messages, $rounds rounds (MB counts both directions)"
echo "round direct_MB/s sidekey_MB/s ratio sidekey_cpu_us_per_MB"
for r in $(seq 1 "$rounds"); do
  direct="$($pin_load "$load" client "wss://localhost:$port/v1/stream" "$mib" "$kib" "$work/ca.pem")"
  before="$(ticks)"
  via="$($pin_load "$load" client "ws://$addr/v1/stream" "$mib" "$kib")"
  after="$(ticks)"
  d_rate="$(echo "$direct" | awk '{print $3}')"
  v_mb="$(echo "$via" | awk '{print $1}')"
  v_rate="$(echo "$via" | awk '{print $3}')"
  awk -v r="$r" -v d="$d_rate" -v v="$v_rate" -v mb="$v_mb" -v t=$((after - before)) -v hz="$hz" \
    'BEGIN { printf "%d %.0f %.0f %.2f %.1f\n", r, d, v, v / d, t / hz * 1e6 / mb }'
done
echo "# sidekey RSS after: $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") kB, peak $(awk '/VmHWM/ {print $2}' "/proc/$pid/status") kB"
