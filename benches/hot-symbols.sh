#!/usr/bin/env bash
# Regenerates build/hot-symbols.txt, the link order of the release binaries (see build.rs):
# runs `cargo build --release`'s sidekey and the shipped static one (benches/build-release.sh:
# other flags, so other symbol hashes) under valgrind's callgrind through start-up,
# allowed/denied/rejected requests, a 3 s wrk run, forward-proxy tunnels, admin endpoints, a key rotation and a
# config reload, then lists every function that ran in either, hottest first (a name the
# other binary lacks is skipped by its linker). Rebuild both afterwards: only sidekey is
# relinked. Needs valgrind, wrk and curl.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release --locked --manifest-path "$root/Cargo.toml" >&2
shipped="$("$root/benches/build-release.sh")"
cargo build --release --locked --example forward_load --manifest-path "$root/Cargo.toml" >&2
work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
"$root/target/release/examples/forward_load" upstream "$work" localhost > "$work/upstream.out" &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/upstream.out" ] && break; sleep 0.05; done
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free)" admin="$(free)" fport="$(free)"
upport="$(head -1 "$work/upstream.out")"
printf %s "test-key-1" > "$work/key"
"$shipped" ca init --dir "$work/ca" --host localhost > /dev/null
cat > "$work/sidekey.toml" <<TOML
[listener]
address = "127.0.0.1:$port"
[admin]
address = "127.0.0.1:$admin"
[upstream]
url = "https://localhost:$upport"
ca_file = "upstream-ca.pem"
protocol = "http1"
[credential]
file = "key"
[service]
name = "bench"
allow = ["bench"]
[forward_proxy]
address = "127.0.0.1:$fport"
ca_cert_file = "ca/ca.crt"
ca_key_file = "ca/ca.key"
[runtime]
workers = 1
shutdown_idle = "0s"
[reload]
debounce = "50ms"
[permissions]
bench = ["GET /v1/sandboxes", "GET /v1/sandboxes/{p1}", "POST /v1/sandboxes"]
TOML
profile() { # $1: binary, $2: callgrind output
  RUST_LOG=info,sidekey::access=off valgrind --tool=callgrind --demangle=no --dump-instr=no \
    --callgrind-out-file="$2" "$1" run --config "$work/sidekey.toml" > "$work/sidekey.out" 2>&1 &
  vg=$!
  pids+=($vg)
  for _ in $(seq 1 120); do curl -sf -o /dev/null "127.0.0.1:$port/v1/sandboxes" && break; sleep 0.5; done
  u="127.0.0.1:$port"
  for _ in $(seq 1 100); do curl -s -o /dev/null "$u/v1/sandboxes"; done
  curl -s -o /dev/null -X POST -d '{"a":1}' "$u/v1/sandboxes"
  curl -s -o /dev/null "$u/v1/other"; curl -s -o /dev/null "$u/v1/%2e%2e/x"
  for p in /metrics /readyz /healthz /credential /; do curl -s -o /dev/null "127.0.0.1:$admin$p"; done
  wrk -t1 -c20 -d3s "http://$u/v1/sandboxes/abc" > /dev/null
  printf %s "test-key-2" > "$work/key"; sleep 1
  echo "# touched" >> "$work/sidekey.toml"; sleep 1
  for _ in $(seq 1 20); do curl -s -o /dev/null "$u/v1/sandboxes"; done
  # Part 1 ends here: what every sidekey runs comes first in the link order, what only the
  # forward proxy runs after it (a reverse-only sidekey does not page it in at start).
  callgrind_control -d "$vg" > /dev/null
  # The forward proxy: new tunnels, then many requests in one, and a refused one.
  f=(-s -o /dev/null -x "127.0.0.1:$fport" --cacert "$work/ca/ca.crt")
  code="$(curl "${f[@]}" -w '%{http_code}' "https://localhost:$upport/v1/sandboxes")"
  [ "$code" = 200 ] || { echo "the forward proxy answered $code" >&2; cat "$work/sidekey.out" >&2; exit 1; }
  for _ in $(seq 1 10); do curl "${f[@]}" "https://localhost:$upport/v1/sandboxes"; done
  curl "${f[@]}" $(for _ in $(seq 1 50); do printf -- '-o /dev/null %s ' "https://localhost:$upport/v1/sandboxes"; done)
  curl "${f[@]}" "https://localhost:$upport/v1/other"
  kill -TERM "$vg"; wait "$vg" || true
  printf %s "test-key-1" > "$work/key"
}
profile "$root/target/release/sidekey" "$work/cg-dynamic.out"
profile "$shipped" "$work/cg-static.out"
python3 - "$work" > "$root/build/hot-symbols.txt" <<'PY'
import collections, glob, re, sys
def parts(prefix):
  """callgrind's dumps of one run, in order: prefix.1, prefix.2, ... (then prefix itself)."""
  numbered = sorted(glob.glob(prefix + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
  return numbered + ([prefix] if glob.glob(prefix) else [])
def hottest(path):
  names, cost, cur = {}, collections.Counter(), None
  for line in open(path):
    m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        kind, i, name = m.groups()
        if name:
            names[i] = name
        if kind == "fn":
            cur = i
    elif cur and re.match(r"^[+-]?\d+ \d+$", line):
        cost[cur] += int(line.split()[1])
  return [names.get(i, "") for i, _ in cost.most_common()]
runs = [parts(sys.argv[1] + "/cg-dynamic.out"), parts(sys.argv[1] + "/cg-static.out")]
seen = set()
# Part by part (everything before the forward proxy first), each binary's hottest first.
for k in range(max(len(r) for r in runs)):
  for r in runs:
    if k >= len(r):
      continue
    for n in hottest(r[k]):
      if n and not n.startswith(("0x", "(")) and n not in seen:
        seen.add(n)
        print(n)
PY
wc -l < "$root/build/hot-symbols.txt" >&2
