#!/usr/bin/env bash
# Model parity on a GPU machine in a few minutes (GME bf16, CLIP, diffusion fp16 against float32 on the
# CPU), through the project's own model classes; see scripts/gpu_check.py for what is compared.
#
#   scripts/gpu_check.sh [--device cuda|cpu] [--checks gme,clip,diffusion] [--strict] [...]
#   scripts/gpu_check.sh --fetch-wheels     # here, with network: the pure-Python wheels a GPU machine lacks
#
# A lent GPU machine has torch, transformers, timm and torchvision but not diffusers or open_clip, and no
# network: `--fetch-wheels` downloads them (the versions installed here) into .whl/ (git-ignored), which
# travels with the tree when named (the device tool's `carry: [".whl"]`); this script then installs them
# into a temporary folder on PYTHONPATH, never into the machine's Python. Without them the clip and
# diffusion checks say SKIP. Exit: 0 all passed, 1 a threshold failed, 2 the environment cannot run it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  mkdir -p .whl
  pins=$("$PYTHON" - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("diffusers", "open_clip_torch", "ftfy", "wcwidth", "importlib_metadata")))
EOF
)
  # shellcheck disable=SC2086
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d .whl $pins
  ls -1 .whl
  exit 0
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  site="${TMPDIR:-/tmp}/fusegen-gpu-site"
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "$PYTHON" scripts/gpu_check.py "$@"
