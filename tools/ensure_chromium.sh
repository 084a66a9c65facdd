#!/usr/bin/env bash
# Make sure Debian's Chromium exists for the console's browser tests (tests/browser.py drives it
# with Playwright's Python package, pointed at /usr/bin/chromium: Playwright's own browser
# download is never used, since only the package registries can be reached).
# Exits 0 with a note when it cannot install (not root, no apt): the browser tests then fail,
# saying so, rather than the whole run stopping here.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: chromium missing and cannot apt-get install it (needs root + apt); the browser tests will fail" >&2
    exit 0
fi
echo "ensure_chromium: installing Debian package 'chromium' ..." >&2
export DEBIAN_FRONTEND=noninteractive
# Quiet when it works (debconf's notes are noise); the whole log when it does not.
quietly() {
    local out
    if ! out=$("$@" 2>&1); then
        echo "$out" >&2
        echo "ensure_chromium: '$*' failed" >&2
        return 1
    fi
}
quietly apt-get update -qq
quietly apt-get install -y -qq --no-install-recommends chromium
[ -x /usr/bin/chromium ]
