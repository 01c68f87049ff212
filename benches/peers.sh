#!/usr/bin/env bash
# Runs the peer harness (../shared/peers: Envoy, nginx, HAProxy, direct) with sidekey as the
# candidate, all doing the same job in one run. Extra arguments go to run.sh, e.g.
#   benches/peers.sh --rounds 3
#   benches/peers.sh --only direct,nginx,candidate --duration 5
# Needs `../shared/peers/setup.sh --with-oha` once. Builds the shipped binary first
# (benches/build-release.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
peers="${PEERS_DIR:-$root/../shared/peers}"
[ -x "$peers/run.sh" ] || { echo "peer harness not found at $peers (set PEERS_DIR)" >&2; exit 2; }

# The shipped binary (static glibc, fat LTO); SIDEKEY_DYNAMIC=1 for the plain release build.
bin="$("$here/build-release.sh")"

export CANDIDATE_NAME="${CANDIDATE_NAME:-sidekey}"
# The harness substitutes the placeholders; candidate.sh writes the config and execs sidekey.
export CANDIDATE_CMD="$here/peers-candidate.sh $bin {listen} {upstream_url} {ca_file} {key_file} {workers} {allowlist} {workdir}"
exec "$peers/run.sh" "$@"
