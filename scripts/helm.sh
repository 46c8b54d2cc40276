#!/usr/bin/env bash
# Run the pinned helm, building it once from source into the clipaudit tool cache.
#
#   scripts/helm.sh template clipaudit deploy/k8s/clipaudit -f deploy/k8s/clipaudit/ci/cpu-values.yaml
#   scripts/helm.sh --path        # build if needed, print the binary's path
#
# The binary lands in ${XDG_CACHE_HOME:-~/.cache}/clipaudit/bin/helm (beside the MinIO
# build of `clipaudit stack tools`) and is rebuilt only when HELM_VERSION or K8S_MINOR change.
# Building needs Go and the Go module proxy; a cold build takes minutes, a cached one
# nothing. Concurrent callers wait on a lock instead of building twice.
set -euo pipefail

HELM_VERSION=v3.22.0
# Kubernetes minor version helm assumes by default (`helm template` without --kube-version):
# that of k8s.io/client-go in helm's go.mod (v0.37 for v3.22.0), set at link time like
# helm's own Makefile does; a bare `go install` would leave it at 1.20.
K8S_MINOR=37
BIN_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/clipaudit/bin"
HELM="$BIN_DIR/helm"
STAMP="$BIN_DIR/helm.version"

BUILD_ID="$HELM_VERSION k8s-1.$K8S_MINOR"
LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  LDFLAGS+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$K8S_MINOR"
done

is_current() { [[ -x "$HELM" && "$(cat "$STAMP" 2>/dev/null)" == "$BUILD_ID" ]]; }

if ! is_current; then
  command -v go >/dev/null || { echo "scripts/helm.sh: Go is needed to build helm $HELM_VERSION (none on PATH)" >&2; exit 1; }
  mkdir -p "$BIN_DIR"
  exec 9>"$BIN_DIR/.helm.lock"
  flock 9
  if ! is_current; then
    build_dir="$(mktemp -d "$BIN_DIR/.helm-build.XXXXXX")"
    trap 'rm -rf "$build_dir"' EXIT
    echo "scripts/helm.sh: building helm $HELM_VERSION into $BIN_DIR (once)" >&2
    start=$SECONDS
    GOBIN="$build_dir" GOFLAGS=-modcacherw go install -trimpath -ldflags "$LDFLAGS" \
      "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
    mv -f "$build_dir/helm" "$HELM"
    echo "$BUILD_ID" >"$STAMP"
    echo "scripts/helm.sh: built helm $HELM_VERSION in $((SECONDS - start)) s" >&2
  fi
  exec 9>&-
fi

if [[ "${1:-}" == "--path" ]]; then
  echo "$HELM"
  exit 0
fi
exec "$HELM" "$@"
