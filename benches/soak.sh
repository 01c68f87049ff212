#!/usr/bin/env bash
# Soak: one sidekey with every listener kind busy for a bounded time, and its key rotated
# every minute. Fails on any failed request, or if RSS or the open-fd count grew more than 10%
# (median of the first 30 s under load against the last 30 s).
#
#   - the shared listener: wrk on allowed routes (any non-2xx or socket error is a failure),
#     and a second wrk on a mix of denied, unknown and ambiguous requests (refusals expected);
#   - an API's own listener: wrk on allowed routes (failures counted as above);
#   - the forward proxy: examples/forward_load (CONNECT, TLS to sidekey's leaf, keep-alive),
#     which fails on any answer but 200;
#   - WebSocket: examples/ws_load clients back to back through sidekey, each must finish;
#   - the key file rewritten (write, then rename) every SOAK_ROTATE seconds.
#
#   benches/soak.sh                   # 10 minutes
#   SOAK_SECONDS=1800 benches/soak.sh # the 30-minute soak in BENCHMARKS.md
#   SOAK_SECONDS=60 benches/soak.sh   # a quick look
# Needs wrk (Debian package `wrk`; ../shared/peers/setup.sh installs it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${SOAK_SECONDS:-600}"
rotate="${SOAK_ROTATE:-60}"
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 2; }

bin="${SIDEKEY_BIN:-$("$root/benches/build-release.sh" 2>/dev/null)}"
cargo build --release --locked --example forward_load --example ws_load --manifest-path "$root/Cargo.toml" >&2
fwd_load="$root/target/release/examples/forward_load"
ws_load="$root/target/release/examples/ws_load"
host="api.soak.test"
work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT

"$fwd_load" upstream "$work" "$host" > "$work/upstream.out" &
pids+=($!)
mkdir -p "$work/ws"
"$ws_load" upstream "$work/ws" > "$work/ws-upstream.out" &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/upstream.out" ] && [ -s "$work/ws-upstream.out" ] && break; sleep 0.05; done
port="$(head -1 "$work/upstream.out")"
ws_port="$(head -1 "$work/ws-upstream.out")"
"$bin" ca init --dir "$work/ca" --host "$host" > /dev/null
printf %s "sk_soak_key_0" > "$work/api-key"
cat > "$work/sidekey.toml" <<TOML
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[reload]
interval = "5s"
debounce = "50ms"
[forward_proxy]
address = "127.0.0.1:0"
ca_cert_file = "ca/ca.crt"
ca_key_file = "ca/ca.key"

[api.main]
url = "https://$host"
connect_to = "127.0.0.1:$port"
ca_file = "upstream-ca.pem"
path_prefix = "/main"
listen = "127.0.0.1:0"
credential = { file = "api-key" }
permissions = { "read" = ["GET /v1/items", "GET /v1/items/{id}"], "write" = ["DELETE /v1/items/{id}"] }

[api.ws]
url = "https://localhost:$ws_port"
ca_file = "ws/ca.pem"
path_prefix = "/ws"
credential = { file = "api-key" }
permissions = { "stream" = [{ route = "GET /v1/stream", websocket = true }] }

[service]
name = "soak"
allow = ["main/read", "ws/stream"]
TOML
RUST_LOG=warn,sidekey=info,sidekey::access=off "$bin" run --config "$work/sidekey.toml" > "$work/sidekey.out" 2>&1 &
pid=$!
pids+=($pid)
shared="" own="" fwd=""
for _ in $(seq 1 100); do
  shared="$(grep 'sidekey bound' "$work/sidekey.out" | sed -n 's/.*"listener":"\([0-9.:]*\)".*/\1/p' | head -1 || true)"
  own="$(grep 'api listener bound' "$work/sidekey.out" | sed -n 's/.*"listener":"\([0-9.:]*\)".*/\1/p' | head -1 || true)"
  fwd="$(sed -n 's/.*"forward_proxy":"\([0-9.:]*\)".*/\1/p' "$work/sidekey.out" | head -1)"
  [ -n "$shared" ] && [ -n "$own" ] && [ -n "$fwd" ] && break
  sleep 0.1
done
if [ -z "$shared" ] || [ -z "$own" ] || [ -z "$fwd" ]; then
  cat "$work/sidekey.out" >&2; echo "sidekey did not start (shared=$shared own=$own forward=$fwd)" >&2; exit 1
fi

# allowed_lua FILE ITEM: GETs of the list and of ITEM, statuses other than 200 counted per
# thread and printed at the end (wrk.format at load time has no Host of wrk's own: name it).
allowed_lua() {
  cat > "$1" <<LUA
local h = {Host = "localhost"}
local reqs = { wrk.format("GET", "/main/v1/items", h), wrk.format("GET", "/main/v1/items/$2", h) }
local i = 0
request = function() i = i % #reqs + 1; return reqs[i] end
bad = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status) if status ~= 200 then bad[status] = (bad[status] or 0) + 1 end end
function done()
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("bad")) do io.write("status ", status, ": ", n, "\n") end
  end
end
LUA
}
allowed_lua "$work/allowed.lua" it_1
allowed_lua "$work/own.lua" it_2
cat > "$work/refused.lua" <<'LUA'
-- denied (permission), no route, ambiguous path, a body to a denied route
local h = {Host = "localhost"}
local reqs = {
  wrk.format("DELETE", "/main/v1/items/it_1", h),
  wrk.format("GET", "/v2/unknown", h),
  wrk.format("GET", "/main/v1/items/%2e%2e/admin", h),
  wrk.format("POST", "/main/v1/items", {Host = "localhost", ["Content-Length"] = "2"}, "{}"),
}
local i = 0
request = function() i = i % #reqs + 1; return reqs[i] end
LUA

sample() { # rss_kb fds
  echo "$(awk '/VmRSS/ {print $2}' "/proc/$pid/status") $(ls "/proc/$pid/fd" | wc -l)"
}
# Warm up: pools, buffers, leaves, the allocator.
wrk -t1 -c4 -d10s -s "$work/allowed.lua" "http://$shared" > /dev/null
"$fwd_load" forward "$fwd" "$host" /v1/items "$work/ca/ca.crt" 2 5 > /dev/null

wrk -t1 -c4 -d"${secs}s" -s "$work/allowed.lua" "http://$shared" > "$work/wrk-shared.out" &
w1=$!
wrk -t1 -c2 -d"${secs}s" -s "$work/own.lua" "http://$own" > "$work/wrk-own.out" &
w2=$!
wrk -t1 -c2 -d"${secs}s" -s "$work/refused.lua" "http://$shared" > "$work/wrk-refused.out" &
w3=$!
"$fwd_load" forward "$fwd" "$host" /v1/items "$work/ca/ca.crt" 2 "$secs" > "$work/forward.out" 2>&1 &
w4=$!
( end=$((SECONDS + secs)); ok=0; bad=0
  while [ "$SECONDS" -lt "$end" ]; do
    if "$ws_load" client "ws://$shared/ws/v1/stream" 8 16 > /dev/null 2>> "$work/ws.err"; then
      ok=$((ok + 1)); else bad=$((bad + 1)); fi
  done
  echo "$ok $bad" > "$work/ws.out" ) &
w5=$!

every=60
t=0 n=0
: > "$work/samples"
while kill -0 "$w1" 2>/dev/null; do
  sleep 1; t=$((t + 1))
  if [ $((t % rotate)) = 0 ]; then
    n=$((n + 1))
    printf %s "sk_soak_key_$n" > "$work/api-key.tmp" && mv "$work/api-key.tmp" "$work/api-key"
  fi
  if [ $((t % 5)) = 0 ] && kill -0 "$w1" 2>/dev/null; then
    read -r r f < <(sample); echo "$t $r $f" >> "$work/samples"
    if [ $((t % every)) = 0 ]; then echo "  t=${t}s rss ${r} kB fds ${f} rotations ${n}"; fi
  fi
done
ok=1
for w in "$w1" "$w2" "$w3"; do wait "$w" || ok=0; done
wait "$w4" || { echo "FAIL: the forward-proxy load saw a failed request:"; tail -5 "$work/forward.out"; ok=0; }
wait "$w5" || true
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rss0=$(awk '$1 <= 30 {print $2}' "$work/samples" | median)
fd0=$(awk '$1 <= 30 {print $3}' "$work/samples" | median)
last=$(tail -1 "$work/samples" | awk '{print $1}')
rss1=$(awk -v l="$last" '$1 > l - 30 {print $2}' "$work/samples" | median)
fd1=$(awk -v l="$last" '$1 > l - 30 {print $3}' "$work/samples" | median)
failures() { # wrk output -> non-2xx + socket errors
  awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$1"
}
reqs() { awk '/requests in/ {print $1}' "$1"; }
read -r ws_ok ws_bad < "$work/ws.out"
echo "soak: ${secs}s, key rotated every ${rotate}s ($n rotations)"
echo "  shared listener, allowed:   $(reqs "$work/wrk-shared.out") requests, $(failures "$work/wrk-shared.out") failed"
echo "  API's own listener:         $(reqs "$work/wrk-own.out") requests, $(failures "$work/wrk-own.out") failed"
echo "  shared listener, refusals:  $(reqs "$work/wrk-refused.out") requests (403/400 expected)"
echo "  forward proxy:              $(awk '{print $1}' "$work/forward.out" | tail -1) requests, every one 200: $([ "$ok" = 1 ] && echo yes || echo no)"
echo "  WebSocket:                  $ws_ok sessions of 8 MiB each way completed, $ws_bad failed"
echo "start (median of the first 30 s under load): rss ${rss0} kB, fds ${fd0}"
echo "end   (median of the last 30 s under load):  rss ${rss1} kB, fds ${fd1}"
[ "$(failures "$work/wrk-shared.out")" = 0 ] || { echo "FAIL: failed requests on the shared listener:"; grep -E "^status|Socket" "$work/wrk-shared.out"; ok=0; }
[ "$(failures "$work/wrk-own.out")" = 0 ] || { echo "FAIL: failed requests on the API's own listener:"; grep -E "^status|Socket" "$work/wrk-own.out"; ok=0; }
# sidekey's log, kept for a look after a failure.
cp "$work/sidekey.out" "${SOAK_LOG:-/tmp/soak-sidekey.log}"
[ "$ws_bad" = 0 ] && [ "$ws_ok" -gt 0 ] || { echo "FAIL: WebSocket sessions failed:"; tail -3 "$work/ws.err"; ok=0; }
awk -v a="$rss0" -v b="$rss1" 'BEGIN { exit !(b <= a * 1.10) }' || { echo "FAIL: RSS grew more than 10%"; ok=0; }
awk -v a="$fd0" -v b="$fd1" 'BEGIN { exit !(b <= a * 1.10 + 1) }' || { echo "FAIL: fd count grew more than 10%"; ok=0; }
[ "$ok" = 1 ] && echo "soak: no failed request; flat (within 10%)"
[ "$ok" = 1 ]
