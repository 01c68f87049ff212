#!/usr/bin/env bash
# Builds the binary sidekey ships (the container image builds the same way) and prints its
# path: release profile (fat LTO, one codegen unit), glibc linked statically
# (`crt-static`), for the host target. Static glibc still resolves names through
# /etc/hosts and DNS (both built into glibc >= 2.34); it saves the shared libraries'
# resident pages (BENCHMARKS.md, "RSS at start").
#   SIDEKEY_DYNAMIC=1 benches/build-release.sh   # the plain `cargo build --release` binary
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ "${SIDEKEY_DYNAMIC:-0}" = 1 ]; then
  cargo build --release --locked --manifest-path "$root/Cargo.toml" >&2
  echo "$root/target/release/sidekey"
  exit 0
fi
host="$(rustc -vV | sed -n 's/^host: //p')"
# An explicit --target keeps the static flag off build scripts and proc-macros.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$host" --manifest-path "$root/Cargo.toml" >&2
echo "$root/target/$host/release/sidekey"
