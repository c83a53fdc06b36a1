#!/usr/bin/env bash
# Static checks of the deployment files; needs no Docker engine and no cluster.
#   bash deploy/check.sh
# - docker-compose.yml: `docker-compose config -q` (Debian's docker-compose, or
#   the `docker compose` plugin), skipped with a note when neither is installed.
# - deploy/kubernetes: `kubectl kustomize`, with and without the cert-manager
#   component, when kubectl is installed.
# - deploy/compose/gen-certs.sh: `sh -n`.
# Exits non-zero on the first failure. The manifests' content (sidecar shape,
# probes, routes.yaml validity) is checked by test/unit/deploy.test.ts.
set -euo pipefail
cd "$(dirname "$0")/.."

ran=0
say() { printf 'deploy/check: %s\n' "$*"; }

if command -v docker-compose >/dev/null 2>&1; then
  docker-compose -f docker-compose.yml config -q
  say "docker-compose config: ok ($(docker-compose version --short 2>/dev/null || echo '?'))"
  ran=$((ran + 1))
elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  docker compose -f docker-compose.yml config -q
  say "docker compose config: ok"
  ran=$((ran + 1))
else
  say "docker-compose not installed: compose check skipped (apt-get install docker-compose)"
fi

if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize deploy/kubernetes >/dev/null
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  cp -R deploy/kubernetes "$tmp/k"
  printf '\ncomponents:\n  - cert-manager\n' >>"$tmp/k/kustomization.yaml"
  kubectl kustomize "$tmp/k" >/dev/null
  say "kubectl kustomize deploy/kubernetes (with and without cert-manager): ok"
  ran=$((ran + 1))
else
  say "kubectl not installed: kustomize check skipped"
fi

sh -n deploy/compose/gen-certs.sh
say "gen-certs.sh syntax: ok"

say "done ($ran tool checks ran)"
