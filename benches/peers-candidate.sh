#!/usr/bin/env bash
# Writes a sidekey config from the peer harness placeholders and execs sidekey (so the
# harness's SIGTERM reaches it). Same job as the peers: the harness allow-list, the mounted
# key file, the throwaway CA, the same worker count, an HTTP/1.1 upstream pool (set
# SIDEKEY_UPSTREAM_PROTOCOL=http2 to compare with envoy-h2). Access logs are off, as in the
# peers' configs; metrics stay on.
set -euo pipefail
bin="$1" listen="$2" upstream="$3" ca="$4" key="$5" workers="$6" allowlist="$7" workdir="$8"
mkdir -p "$workdir"
# The harness allow-list: `*` is one segment, `**` zero or more further segments.
routes=""
while read -r method path; do
  case "$method" in ''|\#*) continue ;; esac
  if [[ "$path" == */\*\* ]]; then
    base="${path%/\*\*}"
    routes+="  \"$method $base\",\n  \"$method $base/{*rest}\",\n"
  else
    n=0
    out=""
    IFS='/' read -ra segs <<< "${path#/}"
    for s in "${segs[@]}"; do
      if [ "$s" = "*" ]; then n=$((n + 1)); s="{p$n}"; fi
      out+="/$s"
    done
    routes+="  \"$method $out\",\n"
  fi
done < "$allowlist"
cat > "$workdir/sidekey.toml" <<TOML
[listener]
address = "$listen"

[admin]
address = "127.0.0.1:0"

[upstream]
url = "$upstream"
ca_file = "$ca"
protocol = "${SIDEKEY_UPSTREAM_PROTOCOL:-http1}"

[credential]
file = "$key"

[service]
name = "bench"
allow = ["bench"]

[runtime]
workers = $workers
shutdown_idle = "0s"

[permissions]
bench = [
$(printf '%b' "$routes")]
TOML
export RUST_LOG="${RUST_LOG:-info,sidekey::access=off}"
exec "$bin" run --config "$workdir/sidekey.toml"
