#!/usr/bin/env bash
# Install (if needed) and run the test suite: unit tests, then e2e tests on a real local Ray cluster.
# GPU tests are skipped here (-m "not gpu"); run them with `pytest -m gpu` on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -m "not gpu" -p no:cacheprovider -q "$@"
