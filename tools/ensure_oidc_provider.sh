#!/usr/bin/env bash
# Make sure the test OpenID Connect provider is installed (tests/oidc_provider.py runs it):
# oauth2-mock-server from the npm registry, pinned by tests/oidc_provider/package-lock.json.
# Runs `npm ci` when node_modules is missing or was installed from another lock file (a stamp keeps
# the lock file's hash). Exits 0 with a note when node or npm is missing: the OIDC tests then fail
# saying so, rather than the whole run stopping here.
set -euo pipefail

dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/oidc_provider"
stamp="$dir/node_modules/.maas-lock-sha256"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "ensure_oidc_provider: node or npm missing (Node.js 20.19+ is needed); the OIDC tests will fail" >&2
    exit 0
fi
wanted="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    exit 0
fi
echo "ensure_oidc_provider: installing the test OpenID provider (npm ci in tests/oidc_provider) ..." >&2
out=$(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error 2>&1) || {
    echo "$out" >&2
    echo "ensure_oidc_provider: 'npm ci' failed" >&2
    exit 1
}
echo "$wanted" >"$stamp"
