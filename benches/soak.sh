#!/usr/bin/env bash
# Soak: sidekey under steady mixed load (allowed, denied, malformed requests) for a bounded
# time; reports RSS and open fds at the start and at the end, and fails if either grew by
# more than 10%. Loopback only: it runs `sidekey demo` (mock upstream + proxy in one process).
#
#   benches/soak.sh                 # 10 minutes
#   SOAK_SECONDS=60 benches/soak.sh # shorter
# Needs wrk (Debian package `wrk`; ../shared/peers/setup.sh installs it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${SOAK_SECONDS:-600}"
conns="${SOAK_CONNECTIONS:-16}"
rate_note="wrk -t1 -c$conns"
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 2; }

bin="$("$root/benches/build-release.sh" 2>/dev/null)"   # the shipped binary
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
RUST_LOG="warn" "$bin" demo > "$work/demo.out" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "sidekey proxy" "$work/demo.out" && break; sleep 0.1; done
proxy="$(sed -n 's/.*sidekey proxy *\(http:\/\/[0-9.:]*\).*/\1/p' "$work/demo.out" | head -1)"
[ -n "$proxy" ] || { cat "$work/demo.out"; echo "demo did not start" >&2; exit 1; }

cat > "$work/mix.lua" <<'LUA'
-- allowed, denied (permission), denied (no route), rejected (ambiguous path)
local reqs = {
  wrk.format("GET", "/v1/sandboxes/sb_1"),
  wrk.format("POST", "/v1/sandboxes", {["Content-Length"] = "2"}, "{}"),
  wrk.format("DELETE", "/v1/sandboxes/sb_1"),
  wrk.format("GET", "/v2/unknown"),
  wrk.format("GET", "/v1/sandboxes/%2e%2e/admin"),
}
local i = 0
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
LUA

sample() { # rss_kb fds
  local rss fds
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  fds=$(ls "/proc/$pid/fd" | wc -l)
  echo "$rss $fds"
}
warm="${SOAK_WARMUP:-30}"
wrk -t1 -c"$conns" -d"${warm}s" -s "$work/mix.lua" "$proxy" >/dev/null   # warm up: pools, buffers, allocator
wrk -t1 -c"$conns" -d"${secs}s" -s "$work/mix.lua" "$proxy" > "$work/wrk.out" &
wrk_pid=$!
# Under load, one sample every 5 s. Start and end are the medians of the first and the last
# 30 s of samples (one sample catches the allocator mid-burst); the trend is printed too.
every="${SOAK_EVERY:-60}"
t=0
: > "$work/samples"
while kill -0 "$wrk_pid" 2>/dev/null; do
  sleep 1; t=$((t + 1))
  if [ $((t % 5)) = 0 ] && kill -0 "$wrk_pid" 2>/dev/null; then
    read -r r f < <(sample); echo "$t $r $f" >> "$work/samples"
    if [ $((t % every)) = 0 ]; then echo "  t=${t}s rss ${r} kB fds ${f}"; fi
  fi
done
wait "$wrk_pid"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rss0=$(awk '$1 <= 30 {print $2}' "$work/samples" | median)
fd0=$(awk '$1 <= 30 {print $3}' "$work/samples" | median)
last=$(tail -1 "$work/samples" | awk '{print $1}')
rss1=$(awk -v l="$last" '$1 > l - 30 {print $2}' "$work/samples" | median)
fd1=$(awk -v l="$last" '$1 > l - 30 {print $3}' "$work/samples" | median)
reqs=$(awk '/requests in/ {print $1}' "$work/wrk.out")
echo "soak: ${secs}s, $rate_note, mixed allowed/denied/malformed, $reqs requests"
echo "start (median of the first 30 s under load): rss ${rss0} kB, fds ${fd0}"
echo "end   (median of the last 30 s under load):  rss ${rss1} kB, fds ${fd1}"
ok=1
awk -v a="$rss0" -v b="$rss1" 'BEGIN { exit !(b <= a * 1.10) }' || { echo "FAIL: RSS grew more than 10%"; ok=0; }
awk -v a="$fd0" -v b="$fd1" 'BEGIN { exit !(b <= a * 1.10 + 1) }' || { echo "FAIL: fd count grew more than 10%"; ok=0; }
[ "$ok" = 1 ] && echo "soak: flat (within 10%)"
[ "$ok" = 1 ]
