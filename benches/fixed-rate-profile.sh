#!/usr/bin/env bash
# Where a proxy's time goes at ordinary load: the peer harness's fixed-rate shape (oha, 16
# keep-alive connections, 2000 req/s, GET /v1/sandboxes) against the harness's own upstream
# (its nginx template and throwaway CA), for sidekey (configured by benches/peers-candidate.sh,
# exactly as in the peer run) or the harness's nginx peer. Reports, per request: CPU (user and
# system), voluntary context switches (sleeps) and syscalls (`strace -c -f`, a separate run,
# since tracing slows the process); then `perf record -e cpu-clock -g` over a third run, the top
# symbols by self time and the share per DSO/crate.
#
#   benches/fixed-rate-profile.sh sidekey       # or: nginx
#   PROFILE_RATE=2000 PROFILE_SECS=5 PROFILE_PERF=0 benches/fixed-rate-profile.sh sidekey
#   PROFILE_TOUCHED=1 benches/fixed-rate-profile.sh sidekey   # RSS after one request, by crate
#   SIDEKEY_BIN=target/release/sidekey ...                      # the plain `cargo build --release`
#   PROFILE_RATE=0 PROFILE_CONNS=50 SIDEKEY_UPSTREAM_PROTOCOL=auto ...   # saturation, HTTP/2 pool
# Needs ../shared/peers/setup.sh --with-oha (nginx, oha, the CA), perf and strace.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=benches/profile-lib.sh
. "$here/profile-lib.sh"
root="$(cd "$here/.." && pwd)"
peers="${PEERS_DIR:-$root/../shared/peers}"
state="${PEERS_STATE:-$peers}"
pki="$state/.work/pki"
oha="$state/.tools/bin/oha"
[ -x "$oha" ] || oha="$(command -v oha)"
target="${1:-sidekey}"
rate="${PROFILE_RATE:-2000}"
secs="${PROFILE_SECS:-5}"
do_perf="${PROFILE_PERF:-1}"
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
start_upstream "$peers" "$pki" "$work"

secret_dir "$work/secret" test-key-1 # Kubernetes-style, as the harness makes it
port="$(free_port)"
case "$target" in
  sidekey)
    bin="${SIDEKEY_BIN:-$("$here/build-release.sh")}"
    "$here/peers-candidate.sh" "$bin" "127.0.0.1:$port" "https://localhost:$up_port" "$pki/ca.crt" \
      "$work/secret/key" 1 "$peers/conf/allowlist.txt" "$work/sidekey" > "$work/proxy.out" 2>&1 &
    ;;
  nginx)
    mkdir -p "$work/nginx-proxy-tmp"
    printf 'set $api_key "%s";\n' test-key-1 > "$work/key.conf"
    render "$peers/conf/nginx-proxy.conf" "$work/nginx.conf" WORKERS=1 RUNDIR="$work" \
      PORT="$port" UP_PORT="$up_port" PKI="$pki" KEY_SNIPPET="$work/key.conf"
    "$nginx_bin" -e "$work/nginx-proxy.error.log" -p "$work" -c "$work/nginx.conf" > "$work/proxy.out" 2>&1 &
    ;;
  *) echo "target: sidekey or nginx" >&2; exit 2 ;;
esac
pid=$!
pids+=($pid)
url="http://127.0.0.1:$port/v1/sandboxes"
wait_ok --fail "$url" || { cat "$work/proxy.out" >&2; echo "$target did not start" >&2; exit 1; }
# The process that does the work: nginx's one worker, sidekey itself.
busy="$pid"
[ "$target" = nginx ] && busy="$(pgrep -P "$pid" | head -1)"

if [ "${PROFILE_TOUCHED:-0}" = 1 ]; then # RSS right after start and one request, by crate
  grep -E '^(VmRSS|RssAnon|RssFile)' "/proc/$busy/status"
  echo "resident kB by mapped file:"
  awk '/^[0-9a-f]+-[0-9a-f]+ / { f = (NF >= 6 ? $6 : "[anon]") } /^Rss:/ { r[f] += $2 }
       END { for (f in r) if (r[f] >= 64) printf "  %6d %s\n", r[f], f }' "/proc/$busy/smaps" | sort -rn
  [ "$target" = sidekey ] && python3 "$here/touched-pages.py" "$busy" "" "${PROFILE_TOP:-30}"
  exit 0
fi
conns="${PROFILE_CONNS:-16}"
pace=(-q "$rate" --latency-correction)
[ "$rate" = 0 ] && pace=() # PROFILE_RATE=0: as fast as it goes (saturation)
load() { "$oha" -z "${1}s" -c "$conns" "${pace[@]}" --no-tui --output-format json "$url" 2>/dev/null; }
hz="$(getconf CLK_TCK)"
load 2 > /dev/null # warm-up: connections open, pool filled, pages touched
read -r u0 s0 <<< "$(awk '{print $14, $15}' "/proc/$busy/stat")"
v0="$(awk '/^voluntary_ctxt/ {print $2}' "/proc/$busy/status")"
out="$(load "$secs")"
read -r u1 s1 <<< "$(awk '{print $14, $15}' "/proc/$busy/stat")"
v1="$(awk '/^voluntary_ctxt/ {print $2}' "/proc/$busy/status")"
printf '%s' "$out" | python3 -c '
import json, sys
d = json.load(sys.stdin); s = d["summary"]; p = d["latencyPercentiles"]
n = sum(d.get("statusCodeDistribution", {}).values())
name, secs = sys.argv[1], sys.argv[2]
u, sy, v, hz = (int(x) for x in sys.argv[3:7])
print("# %s at %.0f req/s over %s s: %d requests, p50 %.3f ms, p99 %.3f ms" % (name, s["requestsPerSec"], secs, n, p["p50"] * 1e3, p["p99"] * 1e3))
print("cpu_us_per_req user %.1f system %.1f total %.1f" % (u / hz * 1e6 / n, sy / hz * 1e6 / n, (u + sy) / hz * 1e6 / n))
print("voluntary_context_switches_per_req %.2f" % (v / n))
' "$target" "$secs" "$((u1 - u0))" "$((s1 - s0))" "$((v1 - v0))" "$hz"

# Syscalls per request (strace slows the process: counts, not times, are the point).
if [ -n "${PROFILE_TRACE:-}" ]; then # e.g. PROFILE_TRACE=openat,read: a timed trace of those instead
  strace -f -tt -e trace="$PROFILE_TRACE" -o "$work/trace.txt" -p "$busy" 2> /dev/null &
else
  strace -c -f -o "$work/strace.txt" -p "$busy" 2> /dev/null &
fi
st=$!
sleep 0.5
out="$(load "$secs")"
kill -INT "$st"; wait "$st" 2>/dev/null || true
n="$(printf '%s' "$out" | python3 -c 'import json,sys; print(sum(json.load(sys.stdin).get("statusCodeDistribution",{}).values()))')"
if [ -n "${PROFILE_TRACE:-}" ]; then
  echo "trace of $PROFILE_TRACE over $n requests: $(wc -l < "$work/trace.txt") calls; the first 40:"
  head -40 "$work/trace.txt"
  exit 0
fi
echo "syscalls_per_req (strace -c -f over $n requests)"
syscalls_per "$work/strace.txt" "$n"

if [ "$do_perf" = 1 ]; then
  # PROFILE_CALLGRAPH=dwarf for callers (the release binary has no frame pointers);
  # PROFILE_PERF_OUT=file keeps the recording for `perf report -i file`.
  perf record -q -e cpu-clock --call-graph "${PROFILE_CALLGRAPH:-fp}" -o "$work/perf.data" -p "$busy" 2> /dev/null &
  pr=$!
  sleep 0.5
  load "$secs" > /dev/null
  kill -INT "$pr"; wait "$pr" 2>/dev/null || true
  [ -n "${PROFILE_PERF_OUT:-}" ] && cp "$work/perf.data" "$PROFILE_PERF_OUT"
  perf_summary "$work/perf.data" "${PROFILE_TOP:-30}"
fi
