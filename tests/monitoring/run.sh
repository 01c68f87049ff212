#!/usr/bin/env bash
# Monitoring checks: promtool over the alerting rules and their unit tests, a real Prometheus
# server scraping a running sidekey (test_prometheus.py), and the admin status page in
# headless Chromium (test_status_page.py), and DNS rebinding refused in that browser
# (test_rebinding.py). Installs Prometheus and Chromium from Debian's
# packages when they are missing (idempotent).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
missing=()
command -v promtool > /dev/null && command -v prometheus > /dev/null || missing+=(prometheus)
command -v chromium > /dev/null || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  # A fresh machine may have empty package lists: refresh them first.
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi
promtool check rules "$root/deploy/monitoring/sidekey-alerts.yml"
(cd "$root/deploy/monitoring" && promtool test rules alerts-test.yml)
bin="${SIDEKEY_BIN:-$root/target/debug/sidekey}"
if [ -z "${SIDEKEY_BIN:-}" ]; then
  cargo build --locked --quiet --manifest-path "$root/Cargo.toml" --bin sidekey
fi
python3 "$root/tests/monitoring/test_prometheus.py" "$bin" "$(command -v prometheus)" "$root"
python3 "$root/tests/monitoring/test_status_page.py" "$bin" "$(command -v chromium)"
python3 "$root/tests/monitoring/test_rebinding.py" "$bin" "$(command -v chromium)"
