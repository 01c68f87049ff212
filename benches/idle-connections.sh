#!/usr/bin/env bash
# Memory per idle keep-alive connection, and memory given back after they close.
#
# Starts `sidekey run` (no upstream is contacted: every request is a 403 sidekey answers
# itself), opens N keep-alive connections back to back with one quick request each, keeps
# them idle, then closes them all and waits. Prints RSS at start, with N idle connections
# (after PARK_WAIT seconds idle), right after they close and CLOSE_WAIT seconds later.
#
#   benches/idle-connections.sh                       # the shipped build, 2000 connections
#   SIDEKEY_BIN=target/release/sidekey benches/idle-connections.sh
#   IDLE_CONNECTIONS=5000 CLOSE_WAIT=60 benches/idle-connections.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
n="${IDLE_CONNECTIONS:-2000}"
park_wait="${PARK_WAIT:-3}"
close_wait="${CLOSE_WAIT:-60}"
bin="${SIDEKEY_BIN:-$("$root/benches/build-release.sh" 2>/dev/null)}"
ulimit -n $((n + 256))

work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
printf %s "sk_bench_idle_connections_0001" > "$work/api-key"
cat > "$work/sidekey.toml" <<TOML
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[upstream]
url = "https://upstream.invalid"
[credential]
file = "api-key"
[service]
name = "idle-bench"
allow = ["read"]
[permissions]
"read" = ["GET /v1/allowed"]
TOML
RUST_LOG=warn,sidekey=info "$bin" run --config "$work/sidekey.toml" > "$work/out" 2>&1 &
pid=$!
addr=""
for _ in $(seq 1 100); do
  addr="$(sed -n 's/.*"listener":"\([0-9.:]*\)".*/\1/p' "$work/out" | head -1)"
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/out"; echo "sidekey did not start" >&2; exit 1; }

rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
python3 - "$addr" "$n" "$park_wait" "$close_wait" "$pid" <<'PY'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
n, park_wait, close_wait, pid = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
def rss():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
req = b"GET /v1/denied HTTP/1.1\r\nHost: bench\r\n\r\n"
def one(s):
    s.sendall(req)
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(4096)
    head, _, body = got.partition(b"\r\n\r\n")
    length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 403"), head
# The baseline is a warm sidecar: one connection served a few requests (first-use set-up
# such as metric series and log buffers is not connection memory).
warm = socket.create_connection((host, int(port)))
for _ in range(10):
    one(warm)
warm.close()
time.sleep(2)
base = rss()
socks = []
for _ in range(n):
    s = socket.create_connection((host, int(port)))
    one(s)
    socks.append(s)
time.sleep(park_wait)
idle = rss()
alive = 0
for s in socks:
    s.setblocking(False)
    try:
        alive += 1 if s.recv(1) != b"" else 0
    except BlockingIOError:
        alive += 1
    s.setblocking(True)
for s in socks:
    s.close()
time.sleep(1)
closed = rss()
time.sleep(close_wait)
after = rss()
print(f"idle connections: {n} (alive after {park_wait:g} s: {alive})")
print(f"RSS at start:                 {base} kB")
print(f"RSS with {n} idle:           {idle} kB  ({(idle - base) * 1024 / n:.0f} bytes per connection)")
print(f"RSS 1 s after they closed:    {closed} kB")
print(f"RSS {close_wait:g} s after they closed:   {after} kB  ({(after - base) * 100 / base:+.1f}% of start)")
PY
