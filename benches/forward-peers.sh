#!/usr/bin/env bash
# Runs the forward-proxy peer harness (../shared/peers/forward.sh: Squid ssl-bump, mitmproxy,
# direct) with sidekey's forward proxy as the candidate, all doing the same job in one run.
# Extra arguments go to forward.sh, e.g.
#   benches/forward-peers.sh --rounds 3
#   benches/forward-peers.sh --only direct,squid,candidate --duration 5
# Needs `../shared/peers/setup.sh --with-forward` once. Builds the shipped binary first
# (benches/build-release.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
peers="${PEERS_DIR:-$root/../shared/peers}"
[ -x "$peers/forward.sh" ] || { echo "peer harness not found at $peers (set PEERS_DIR)" >&2; exit 2; }
bin="$("$here/build-release.sh")"
export CANDIDATE_FWD_NAME="${CANDIDATE_FWD_NAME:-sidekey}"
export CANDIDATE_FWD_CMD="$here/forward-candidate.sh $bin {listen} {api_url} {upstream_host}:{upstream_port} {upstream_ca} {key_file} {ca_dir} {workers} {workdir}"
exec "$peers/forward.sh" "$@"
