#!/usr/bin/env bash
# Monitoring checks: promtool over the alerting rules and their unit tests, a real Prometheus
# server scraping a running sidekey (test_prometheus.py), and the admin status page in
# headless Chromium (test_status_page.py). Installs Prometheus and Chromium from Debian's
# packages when they are missing (idempotent).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
if ! command -v promtool > /dev/null || ! command -v prometheus > /dev/null; then
  $sudo apt-get install -y --no-install-recommends prometheus > /dev/null
fi
if ! command -v chromium > /dev/null; then
  $sudo apt-get install -y --no-install-recommends chromium > /dev/null
fi
promtool check rules "$root/deploy/monitoring/sidekey-alerts.yml"
(cd "$root/deploy/monitoring" && promtool test rules alerts-test.yml)
bin="${SIDEKEY_BIN:-$root/target/debug/sidekey}"
if [ -z "${SIDEKEY_BIN:-}" ]; then
  cargo build --locked --quiet --manifest-path "$root/Cargo.toml" --bin sidekey
fi
python3 "$root/tests/monitoring/test_prometheus.py" "$bin" "$(command -v prometheus)" "$root"
python3 "$root/tests/monitoring/test_status_page.py" "$bin" "$(command -v chromium)"
