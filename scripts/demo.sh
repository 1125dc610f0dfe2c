#!/usr/bin/env bash
# Install (if needed) and run the CPU demo on an embedded local Ray; output lands in runs/demo/export.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# `bash scripts/demo.sh megapairs [...]` runs the MegaPairs demo instead.
if [ "${1:-}" = megapairs ]; then
  shift
  exec .venv/bin/fusegen run configs/megapairs-demo.yaml "$@"
fi
exec .venv/bin/fusegen run configs/demo.yaml "$@"
