#!/usr/bin/env bash
# Installs redis-server from Debian's packages when it is missing (idempotent). The shared
# rate-limit tests (tests/integration/shared_limits) start their own servers on free
# loopback ports; the package's own service, if the installer starts one, is not used.
set -euo pipefail
command -v redis-server > /dev/null && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
# A fresh machine may have empty package lists: refresh them first.
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends redis-server > /dev/null
command -v redis-server > /dev/null
