#!/usr/bin/env bash
# The inbox with real clients: a real browser (Debian's Chromium, driven by Playwright's
# playwright-core from npm; no browser is downloaded) and a real Mailpit client library from npm
# (mailpit-api), both against the real binary, with release going to the tests' fake Google
# (`cargo run --example fake_google`).
#
# Installs what it needs: chromium (apt) if /usr/bin/chromium is missing, and the npm packages
# pinned in package.json / package-lock.json into tests/inbox/node_modules (git-ignored).
# Prints `ok - …` / `not ok - …` per check and ends with `N passed, M failed`; exits 1 if
# anything failed.
#
# Environment: INBOX_SCREENSHOT=FILE also saves the README's screenshot of the inbox;
# CARGO_TARGET_DIR is honoured.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
WORK=$(mktemp -d "${TMPDIR:-/tmp}/smtp2gmail-inbox.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

say() { printf '=== inbox: %s\n' "$*"; }

if [[ ! -x /usr/bin/chromium ]]; then
    say "apt-get install chromium"
    sudo=()
    ((EUID == 0)) || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq </dev/null >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log"; exit 1; }
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium </dev/null >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log"; exit 1; }
fi
say "$(/usr/bin/chromium --version 2>/dev/null | head -n1)"

if ! (cd "$HERE" && node -e 'require.resolve("playwright-core"); require.resolve("mailpit-api")') 2>/dev/null; then
    say "npm ci (playwright-core, mailpit-api)"
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi

say "cargo build (the server and the fake Google)"
(cd "$ROOT" && cargo build --bin smtp2gmail --example fake_google)
export SMTP2GMAIL=$TARGET/debug/smtp2gmail FAKE_GOOGLE=$TARGET/debug/examples/fake_google

PASSED=0
FAILED=0
run() {
    local name=$1 script=$2 log=$WORK/$1.log rc=0
    say "$name"
    mkdir -p "$WORK/$name"
    (cd "$HERE" && WORK=$WORK/$name timeout 300 node "$script") >"$log" 2>&1 || rc=$?
    grep -v -E '^[0-9]+ passed, [0-9]+ failed$' "$log" || true
    local summary
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n1 || true)
    if [[ -z $summary ]]; then
        echo "not ok - $name: ended without its summary (exit status $rc)"
        FAILED=$((FAILED + 1))
        return
    fi
    local p=${summary%% passed*} f=${summary#*, }
    f=${f%% failed}
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f))
    if ((rc != 0 && f == 0)); then
        echo "not ok - $name: exit status $rc"
        FAILED=$((FAILED + 1))
    fi
}

run browser browser.mjs
run mailpit-client mailpit_client.mjs
printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
((FAILED == 0))
