#!/usr/bin/env bash
# Real-client suite: official SDKs (openai, anthropic, PyGithub, twilio, python-telegram-bot,
# datadog-api-client, boto3 against moto), curl, requests, httpx and Node through one sidekey (reverse
# and forward proxy), against TLS mocks on loopback.
# Idempotent: makes (or reuses) a virtualenv under target/, installs the pinned clients from
# tests/clients/requirements.txt and undici under target/clients-node, builds sidekey if
# needed, runs every test_*.py here.
#   tests/clients/run.sh                 # what .ci/run does
#   SIDEKEY_BIN=target/release/sidekey tests/clients/run.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/clients-venv"
req="$root/tests/clients/requirements.txt"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Reinstall only when the pins change.
stamp="$venv/.requirements"
if ! cmp -s "$req" "$stamp"; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
# Node and undici (for EnvHttpProxyAgent): Debian's nodejs when node is missing, undici pinned.
undici_version="6.29.1"
node_dir="$root/target/clients-node"
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends nodejs npm > /dev/null
fi
if ! grep -qs "\"version\": \"$undici_version\"" "$node_dir/node_modules/undici/package.json"; then
  npm install --silent --no-audit --no-fund --prefix "$node_dir" "undici@$undici_version" > /dev/null
fi
export SIDEKEY_NODE_MODULES="$node_dir/node_modules"
bin="${SIDEKEY_BIN:-$root/target/debug/sidekey}"
if [ -z "${SIDEKEY_BIN:-}" ]; then
  cargo build --locked --quiet --manifest-path "$root/Cargo.toml" --bin sidekey
fi
status=0
for t in "$root"/tests/clients/test_*.py; do
  echo "== $(basename "$t")"
  "$venv/bin/python" "$t" "$bin" || status=1
done
exit $status
