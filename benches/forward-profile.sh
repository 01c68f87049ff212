#!/usr/bin/env bash
# Where the forward proxy's time goes at ordinary load: the forward peer harness's keep-alive
# shape (lib/fwdload.py: 16 tunnels opened first, then GETs at a fixed rate, TLS verified
# against sidekey's CA) against the harness's own upstream (its nginx template and CA), with
# sidekey configured by benches/forward-candidate.sh exactly as in the peer run. Reports, per
# request: CPU (from fwdload's /proc accounting), voluntary context switches (sleeps) and
# syscalls (`strace -c -f`, a separate run, since tracing slows the process); then
# `perf record -e cpu-clock -g` over a third run, the top symbols by self time and the share
# per DSO.
#
#   benches/forward-profile.sh                                  # keep-alive, 1000 req/s
#   PROFILE_MODE=tunnels PROFILE_RATE=50 benches/forward-profile.sh   # new tunnels
#   PROFILE_RATE=1000 PROFILE_SECS=5 PROFILE_PERF=0 benches/forward-profile.sh
#   SIDEKEY_BIN=target/release/sidekey ...                      # another build
#   PROFILE_WORKERS=2 ...                                       # [runtime] workers
# Needs ../shared/peers/setup.sh --with-forward (nginx, the CA, the harness's Python), perf
# and strace.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=benches/profile-lib.sh
. "$here/profile-lib.sh"
root="$(cd "$here/.." && pwd)"
peers="${PEERS_DIR:-$root/../shared/peers}"
state="${PEERS_STATE:-$peers}"
[ -d "$state/.work/pki" ] || state="$HOME/.cache/sidekey-peers"
pki="$state/.work/pki"
py="$state/.venv/bin/python"
[ -x "$py" ] || py=python3
mode="${PROFILE_MODE:-keepalive}"
rate="${PROFILE_RATE:-1000}"
secs="${PROFILE_SECS:-5}"
do_perf="${PROFILE_PERF:-1}"
work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
start_upstream "$peers" "$pki" "$work"

secret_dir "$work/secret" test-key-1 # Kubernetes-style, as the harness makes it
mkdir -p "$work/ca"
port="$(free_port)"
api_url="https://api.bench.test:$up_port"
bin="${SIDEKEY_BIN:-$("$here/build-release.sh")}"
"$here/forward-candidate.sh" "$bin" "127.0.0.1:$port" "$api_url" "127.0.0.1:$up_port" "$pki/ca.crt" \
  "$work/secret/key" "$work/ca" "${PROFILE_WORKERS:-1}" "$work/sidekey" > "$work/proxy.out" 2>&1 &
pid=$!
pids+=($pid)
for _ in $(seq 1 200); do
  [ -s "$work/ca/ca.crt" ] && curl -s -o /dev/null --fail -x "127.0.0.1:$port" --cacert "$work/ca/ca.crt" \
    "$api_url/v1/items" && break
  sleep 0.05
done
load() { # SECONDS [extra fwdload args]
  local s="$1"
  shift
  "$py" "$peers/lib/fwdload.py" --mode "$mode" --url "$api_url/v1/items" --rate "$rate" \
    --conns "${PROFILE_CONNS:-16}" --duration "$s" --proxy "127.0.0.1:$port" \
    --cafile "$work/ca/ca.crt" --expect '"key":"test-key-1"' "$@" 2> "$work/fwdload.err" | tail -n1
}
load 2 > /dev/null # warm-up: leaves minted, pool filled, pages touched
v0="$(awk '/^voluntary_ctxt/ {print $2}' "/proc/$pid/status")"
out="$(load "$secs" --cpu "proxy=$pid")"
v1="$(awk '/^voluntary_ctxt/ {print $2}' "/proc/$pid/status")"
printf '%s' "$out" | python3 -c '
import json, sys
d = json.load(sys.stdin)
mode, rate, secs, v = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
n = d.get("completed") or 0
unit = "tunnel" if mode == "tunnels" else "req"
print("# sidekey forward, %s at %s/s over %s s: %d completed (%d ok), p50 %s ms, p99 %s ms" % (mode, rate, secs, n, d.get("ok", 0), d.get("p50_ms"), d.get("p99_ms")))
c = d.get("cpu", {}).get("proxy", {})
print("cpu_us_per_%s %s (%s cores, %s)" % (unit, c.get("us_per"), c.get("cores"), c.get("how")))
print("voluntary_context_switches_per_%s %.2f (main thread)" % (unit, v / n if n else 0))
' "$mode" "$rate" "$secs" "$((v1 - v0))"

if [ -n "${PROFILE_TRACE:-}" ]; then # e.g. PROFILE_TRACE=read,write,sendto: a timed trace of those
  strace -f -tt -e trace="$PROFILE_TRACE" -o "$work/trace.txt" -p "$pid" 2> /dev/null &
else
  strace -c -f -o "$work/strace.txt" -p "$pid" 2> /dev/null &
fi
st=$!
sleep 0.5
out="$(load "$secs")"
kill -INT "$st"; wait "$st" 2>/dev/null || true
n="$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("completed") or 0)')"
if [ -n "${PROFILE_TRACE:-}" ]; then
  from="${PROFILE_TRACE_FROM:-1}"
  echo "trace of $PROFILE_TRACE over $n requests: $(wc -l < "$work/trace.txt") calls; 60 from line $from:"
  sed -n "$from,$((from + 59))p" "$work/trace.txt"
  exit 0
fi
echo "syscalls per request or tunnel (strace -c -f over $n)"
syscalls_per "$work/strace.txt" "$n"

if [ "$do_perf" = 1 ]; then
  perf record -q -e cpu-clock --call-graph "${PROFILE_CALLGRAPH:-fp}" -o "$work/perf.data" -p "$pid" 2> /dev/null &
  pr=$!
  sleep 0.5
  load "$secs" > /dev/null
  kill -INT "$pr"; wait "$pr" 2>/dev/null || true
  [ -n "${PROFILE_PERF_OUT:-}" ] && cp "$work/perf.data" "$PROFILE_PERF_OUT"
  perf_summary "$work/perf.data" "${PROFILE_TOP:-40}"
fi
