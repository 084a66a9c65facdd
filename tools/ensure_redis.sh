#!/usr/bin/env bash
# Make sure a real redis-server exists for the Redis counter tests (tests/redis_harness.py).
# Debian's `redis-server` package is the source; the package's own service is not used (the tests
# start their own Redis on a free 127.0.0.1 port), so it is kept from starting on install.
# Exits 0 with a note when it cannot install (not root, no apt): the Redis tests then skip with a
# clear reason instead of failing the whole run.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_redis: redis-server missing and cannot apt-get install it (needs root + apt); Redis tests will skip" >&2
    exit 0
fi
echo "ensure_redis: installing Debian package 'redis-server' ..." >&2
export DEBIAN_FRONTEND=noninteractive
# Quiet when it works (debconf's notes are noise); the whole log when it does not.
quietly() {
    local out
    if ! out=$("$@" 2>&1); then
        echo "$out" >&2
        echo "ensure_redis: '$*' failed" >&2
        return 1
    fi
}
quietly apt-get update -qq
# policy-rc.d 101 keeps the package's post-install from starting a system Redis on :6379.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
quietly apt-get install -y -qq --no-install-recommends redis-server
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]
