#!/usr/bin/env bash
# Builds two small venvs, one per `datasets` major the exports' consumers run on, so the tests load the
# exports with each (tests/unit/exporters/test_datasets_majors.py): datasets==3.6.0 (ms-swift 3.x pins
# datasets<4) and datasets 5.x (the newest major; ms-swift 4.x pins datasets<4.8.5, between the two).
# Each holds only datasets + pillow (pure Python apart from pyarrow's wheel); the project is not installed
# (the loader script needs nothing of it).
# - Lives outside the clone (default ~/.cache/fusegen/datasets-venvs, env FUSEGEN_DATASETS_VENVS) so later
#   clones and test runs reuse it; a stamp of this script's contents says when it must be rebuilt.
# - Two test runs on one machine: the second waits for the first build (flock), then finds its stamp.
# On failure (no package index reachable) it exits non-zero and writes the reason to $ROOT.failed, which
# the test shows when it skips.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ROOT=${FUSEGEN_DATASETS_VENVS:-$HOME/.cache/fusegen/datasets-venvs}
stamp="$ROOT/.fusegen-datasets-$(sha256sum scripts/install_datasets_venvs.sh | cut -c1-16)"
[ -f "$stamp" ] && exit 0
mkdir -p "$(dirname "$ROOT")"
exec 9> "$ROOT.lock"
flock 9
[ -f "$stamp" ] && exit 0
log="$ROOT.log"
rm -f "$ROOT.failed"
fail() {
  { echo "$1"; tail -n 5 "$log" 2>/dev/null; } > "$ROOT.failed"
  echo "[install-datasets] FAILED: $1 (details: $log)" >&2
  exit 1
}
started=$(date +%s)
rm -rf "$ROOT"
mkdir -p "$ROOT"
: > "$log"
build() {  # name, requirement
  "$PY" -m venv "$ROOT/$1" >> "$log" 2>&1 || return 1
  "$ROOT/$1/bin/python" -m pip install -q --disable-pip-version-check "$2" "pillow>=10" >> "$log" 2>&1 || return 1
  "$ROOT/$1/bin/python" -c "import datasets, PIL; print('$1', datasets.__version__)" >> "$log" 2>&1
}
# The two builds run side by side (pip spends most of its time waiting on the index).
build ds3 "datasets==3.6.0" & pid3=$!
build ds5 "datasets>=5,<6" & pid5=$!
rc3=0 rc5=0
wait "$pid3" || rc3=$?
wait "$pid5" || rc5=$?
[ "$rc3" = 0 ] || fail "could not build $ROOT/ds3 (python -m venv, then pip install datasets==3.6.0)"
[ "$rc5" = 0 ] || fail "could not build $ROOT/ds5 (python -m venv, then pip install datasets>=5,<6)"
touch "$stamp"
echo "[install-datasets] done: $ROOT (ds3, ds5) in $(( $(date +%s) - started )) s"
