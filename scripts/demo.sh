#!/usr/bin/env bash
# Install (if needed) and run the CPU demo on an embedded local Ray; output lands in runs/demo/export.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/fusegen run configs/demo.yaml "$@"
