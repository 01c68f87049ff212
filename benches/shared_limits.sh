#!/usr/bin/env bash
# Shared (Redis) caller limits against in-process ones, through a gateway (TLS listener,
# caller token) to the same TLS mock upstream. The limited caller's rate is far above the
# load, so every request pays for a decision and none is refused:
#   local   the caller's rate decided in-process (no [limits.shared])
#   shared  the same rate decided in Redis (one EVALSHA per request, loopback redis-server)
#   none    a caller without a rate on the shared gateway (no Redis call at all)
# Latency: wrk -c1 (one request at a time: p50/p99 are the per-request cost, no queueing).
# Throughput: wrk -c50. sidekey pinned to core 0, wrk and the upstream to core 1, Redis
# unpinned (pinned beside wrk, its p99 was the scheduler's, not its own).
#
#   benches/shared_limits.sh                 # 10 s per figure, 3 rounds
#   SL_SECS=5 SL_ROUNDS=1 benches/shared_limits.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${SL_SECS:-10}"
rounds="${SL_ROUNDS:-3}"
host="api.bench.test"
bash "$root/tests/redis/install.sh"
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
rport="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly no > "$work/redis.out" 2>&1 &
pids+=($!)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/tls.key" -out "$work/tls.crt" 2> /dev/null
printf %s "sk_bench_shared_0001" > "$work/api-key"
limited="skc_bench_limited_000000000000001" free="skc_bench_free_00000000000000002"
sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
config() { # $1: the [limits.shared] section, or nothing
  cat <<TOML
[listener]
address = "127.0.0.1:0"
[listener.tls]
cert_file = "tls.crt"
key_file = "tls.key"
[admin]
address = "127.0.0.1:0"
[upstream]
url = "https://$host"
connect_to = "127.0.0.1:$port"
ca_file = "upstream-ca.pem"
protocol = "http1"
[credential]
file = "api-key"
[permissions]
read = ["GET /v1/items"]
$1
[[caller]]
name = "limited"
token_sha256 = "$(sha "$limited")"
allow = ["read"]
rate = "1000000/s"
[[caller]]
name = "free"
token_sha256 = "$(sha "$free")"
allow = ["read"]
TOML
}
pid=""
start() { # $1: config file
  [ -n "$pid" ] && { kill "$pid"; wait "$pid" 2> /dev/null || true; }
  RUST_LOG=warn,sidekey=info,sidekey::access=off $pin_proxy "$bin" run --config "$1" > "$work/sidekey.out" 2>&1 &
  pid=$!
  pids+=($pid)
  addr=""
  for _ in $(seq 1 100); do
    addr="$(sed -n 's/.*"listener":"\([0-9.:]*\)".*/\1/p' "$work/sidekey.out" | head -1)"
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$work/sidekey.out" "$1" >&2; echo "sidekey did not start" >&2; exit 1; }
}
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz="$(getconf CLK_TCK)"
# wrk: "rps p50_ms p99_ms cpu_us_per_req" for token $1 with $2 connections.
measure() {
  local before after out
  before="$(ticks)"
  out="$($pin_load wrk -t1 -c"$2" -d"${secs}s" --latency -H "Authorization: Bearer $1" "https://$addr/v1/items")"
  after="$(ticks)"
  echo "$out" | awk -v t=$((after - before)) -v hz="$hz" '
    /Requests\/sec/ { rps = $2 }
    /requests in/ { n = $1 }
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; return v * 1000 }
    $1 == "50%" { p50 = ms($2) } $1 == "99%" { p99 = ms($2) }
    / [0-9]+ requests in/ { n = $1 }
    END { printf "%.0f %.3f %.3f %.1f", rps, p50, p99, t / hz * 1e6 / n }'
}
config "" > "$work/local.toml"
config "[limits.shared]
redis_url = \"redis://127.0.0.1:$rport/0\"
timeout = \"20ms\"" > "$work/shared.toml"
echo "# gateway over TLS, sidekey on one core; c1 = one request at a time, c50 = saturation; ${secs} s each"
echo "round mode c1_p50_ms c1_p99_ms c50_rps c50_cpu_us_per_req"
for r in $(seq 1 "$rounds"); do
  start "$work/local.toml"
  l1="$(measure "$limited" 1)"; l50="$(measure "$limited" 50)"
  echo "$r local $(echo "$l1" | cut -d' ' -f2,3) $(echo "$l50" | cut -d' ' -f1,4)"
  start "$work/shared.toml"
  s1="$(measure "$limited" 1)"; s50="$(measure "$limited" 50)"
  echo "$r shared $(echo "$s1" | cut -d' ' -f2,3) $(echo "$s50" | cut -d' ' -f1,4)"
  n1="$(measure "$free" 1)"; n50="$(measure "$free" 50)"
  echo "$r none $(echo "$n1" | cut -d' ' -f2,3) $(echo "$n50" | cut -d' ' -f1,4)"
done
curl -s "http://$(sed -n 's/.*"admin":"\([0-9.:]*\)".*/\1/p' "$work/sidekey.out" | head -1)/metrics" \
  | grep -E '^sidekey_shared_limit_(decisions|errors)_total' | grep -v ' 0$' | sed 's/^/# /'
echo "# sidekey RSS after: $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") kB, peak $(awk '/VmHWM/ {print $2}' "/proc/$pid/status") kB"
