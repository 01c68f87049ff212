#!/usr/bin/env bash
# The forward-proxy harness's candidate: writes a sidekey config from its placeholders (the
# harness's job: CONNECT to the API only, GET /v1/items only, the mounted key file, the
# upstream verified against its CA), mints the interception CA into {ca_dir} with
# `sidekey ca init`, and execs sidekey (so the harness's SIGTERM reaches it). Access logs
# are off, as in the peers' configs; metrics stay on.
set -euo pipefail
bin="$1" listen="$2" api_url="$3" upstream="$4" upstream_ca="$5" key="$6" ca_dir="$7" workers="$8" workdir="$9"
mkdir -p "$workdir"
cat > "$workdir/sidekey.toml" <<TOML
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[runtime]
workers = $workers
[forward_proxy]
address = "$listen"
ca_cert_file = "$ca_dir/ca.crt"
ca_key_file = "$ca_dir/ca.key"

[api.bench]
url = "$api_url"
connect_to = "$upstream"
ca_file = "$upstream_ca"
path_prefix = "/bench"
protocol = "http1"
credential = { file = "$key" }
permissions = { "items" = ["GET /v1/items"] }

[service]
name = "forward-bench"
allow = ["bench/items"]
TOML
host="${api_url#https://}"
host="${host%%:*}"
"$bin" ca init --dir "$ca_dir" --host "$host" > /dev/null
RUST_LOG="warn,sidekey=info,sidekey::access=off" exec "$bin" run --config "$workdir/sidekey.toml"
