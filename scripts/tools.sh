#!/usr/bin/env bash
# Build and cache the local stack's servers (what `make tools` runs):
#   Kafka 4.3.1 jars via mvn, MinIO via `go install` (pinned), Prometheus from apt.
# Idempotent: seconds when cached; a cold MinIO build takes ~5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v chromium >/dev/null || missing+=(chromium)   # browser checks of the HTML reports
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    echo "missing: ${missing[*]}; install them (e.g. sudo apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
fi
command -v go >/dev/null || { echo "go (1.24+) is missing: see https://go.dev/dl" >&2; exit 1; }

"$PY" - <<'PY'
from rich.console import Console
from clipaudit.config import StackSettings
from clipaudit.stack import ensure_tools

for name, path in ensure_tools(StackSettings(), Console()).items():
    print(f"{name:11s} {path}")
PY

# helm (pinned, built once via the Go module proxy) for the chart's render/lint tests
scripts/helm.sh --path >/dev/null
