#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium (package `chromium`, /usr/bin/chromium) and a CJK font, for
# the test that renders the dataset card as a Hub reader sees it and screenshots it
# (tests/e2e/test_card_in_browser.py). Idempotent: exits at once when /usr/bin/chromium exists.
# - Needs root (or password-less sudo) and a reachable Debian mirror. The local package lists may be stale
#   (a version the mirror no longer has): a failed install runs `apt-get update` once and tries again.
# - --no-install-recommends: chromium-sandbox is not needed (the test runs Chromium with --no-sandbox).
# - fonts-wqy-zenhei (7 MB): the demo corpus has Chinese passages; without a CJK font the screenshot shows
#   empty boxes where a reader on the Hub sees text.
# - chromium-driver is not installed: the test drives Chromium from its command line (--dump-dom,
#   --screenshot), no WebDriver.
# On failure it exits non-zero and writes the reason to $STATE.failed (default
# ~/.cache/fusegen/chromium.failed, env FUSEGEN_CHROMIUM_STATE), which the test shows when it skips.
set -euo pipefail
STATE=${FUSEGEN_CHROMIUM_STATE:-$HOME/.cache/fusegen/chromium}
CHROMIUM=/usr/bin/chromium
PACKAGES=(chromium fonts-wqy-zenhei)
[ -x "$CHROMIUM" ] && exit 0
mkdir -p "$(dirname "$STATE")"
# Two CI runs on one machine: the second waits for the first install, then finds the binary.
exec 9> "$STATE.lock"
flock 9
if [ -x "$CHROMIUM" ]; then rm -f "$STATE.failed"; exit 0; fi
log="$STATE.log"
: > "$log"
rm -f "$STATE.failed"
fail() {
  { echo "$1"; tail -n 5 "$log" 2>/dev/null; } > "$STATE.failed"
  echo "[install-chromium] FAILED: $1 (details: $log)" >&2
  exit 1
}
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
  as_root=(sudo -n)
else
  fail "installing Debian's chromium needs root or password-less sudo (run scripts/install_chromium.sh as root)"
fi
command -v apt-get > /dev/null || fail "no apt-get on this machine: install Chromium as /usr/bin/chromium by hand"
started=$(date +%s)
apt_install() {
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${PACKAGES[@]}" >> "$log" 2>&1
}
echo "[install-chromium] apt-get install ${PACKAGES[*]} (~110 MB of downloads)"
if ! apt_install; then
  echo "[install-chromium] refreshing the package lists (apt-get update) and trying again"
  "${as_root[@]}" apt-get update -q >> "$log" 2>&1 || fail "apt-get update failed (no Debian mirror reachable?)"
  apt_install || fail "apt-get install ${PACKAGES[*]} failed"
fi
[ -x "$CHROMIUM" ] || fail "apt-get installed ${PACKAGES[*]} but there is no $CHROMIUM"
"$CHROMIUM" --version >> "$log" 2>&1 || fail "$CHROMIUM is installed but does not start ($CHROMIUM --version)"
echo "[install-chromium] done: $(tail -n 1 "$log") in $(( $(date +%s) - started )) s"
